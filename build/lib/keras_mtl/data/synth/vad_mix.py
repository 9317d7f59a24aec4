"""The built-in VAD set: speech utterances placed into noise at random SNR, with exact frame labels,
written in the layout keras_mtl.data.readers.vad reads."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from keras_mtl.core import fileio
from keras_mtl.core.errors import DataError
from keras_mtl.data.audio import load_audio, write_wav
from keras_mtl.data.readers.vad import SPLITS

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VadBuildConfig:
    clip_seconds: float = 4.0
    train_clips: int = 300
    test_clips: int = 80
    max_utterances: int = 3
    snr_db: tuple = (-5.0, 20.0)
    seed: int = 0
    sample_rate: int = 16000


def _active_span(signal: np.ndarray, sample_rate: int, floor_db: float = -35.0) -> tuple[int, int]:
    """First and last sample of an utterance whose 10 ms energy is within ``floor_db`` of its peak."""
    hop = sample_rate // 100
    n = len(signal) // hop
    if n == 0:
        return 0, len(signal)
    energy = 10 * np.log10(np.mean(signal[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    active = np.flatnonzero(energy > energy.max() + floor_db)
    return int(active[0] * hop), int((active[-1] + 1) * hop)


def build_vad_set(root: str | Path, speech: list[Path], noises: list[Path], config: VadBuildConfig) -> Path:
    """Mix utterances into noise with exact speech labels; deterministic from ``config.seed``."""
    root = Path(root)
    if not speech:
        raise DataError("VAD: no speech utterances to place")
    if not noises:
        raise DataError("VAD: no noise recordings to place them in")
    sr = config.sample_rate
    n = int(round(config.clip_seconds * sr))
    noise_cache: dict[Path, np.ndarray] = {}
    for split, count in (("train", config.train_clips), ("test", config.test_clips)):
        rows, durations = [], []
        # train and test draw from disjoint halves of the utterance list
        pool = speech[: max(1, len(speech) // 2)] if split == "train" else speech[len(speech) // 2 :] or speech
        for index in tqdm(range(count), desc=f"building VAD {split}", unit="clip", disable=None, leave=False):
            rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
            noise_path = noises[int(rng.integers(len(noises)))]
            if noise_path not in noise_cache:
                noise_cache[noise_path] = load_audio(noise_path, sr)
            noise = noise_cache[noise_path]
            start = int(rng.integers(0, max(1, len(noise) - n)))
            mix = np.resize(noise[start : start + n], n).astype(np.float32)
            mix = mix / (np.sqrt(np.mean(mix**2)) + 1e-9) * 0.03
            events = []
            for _ in range(int(rng.integers(0, config.max_utterances + 1))):
                utterance = load_audio(pool[int(rng.integers(len(pool)))], sr)
                first, last = _active_span(utterance, sr)
                utterance = utterance[first:last]
                if len(utterance) == 0 or len(utterance) >= n:
                    continue
                onset = int(rng.integers(0, n - len(utterance)))
                if any(onset < e[1] + sr // 10 and e[0] < onset + len(utterance) + sr // 10 for e in events):
                    continue
                gain = 0.03 * 10 ** (rng.uniform(*config.snr_db) / 20) / (np.sqrt(np.mean(utterance**2)) + 1e-9)
                mix[onset : onset + len(utterance)] += gain * utterance
                events.append((onset, onset + len(utterance)))
            peak = float(np.max(np.abs(mix)))
            if peak > 0.99:
                mix *= 0.99 / peak
            name = f"{split}_{index:05d}.wav"
            write_wav(root / "audio" / split / name, mix, sr)
            if events:
                rows += [f"{name}\t{a / sr:.3f}\t{b / sr:.3f}\tspeech" for a, b in sorted(events)]
            else:
                rows.append(f"{name}\t\t\t")
            durations.append(f"{name}\t{config.clip_seconds:.3f}")
        fileio.write_text(
            root / "metadata" / f"{split}.tsv", "filename\tonset\toffset\tevent_label\n" + "\n".join(rows) + "\n"
        )
        fileio.write_text(
            root / "metadata" / f"{split}_durations.tsv", "filename\tduration\n" + "\n".join(durations) + "\n"
        )
    return root
