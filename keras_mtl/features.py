"""Log-mel front end (tf.signal), SpecAugment-style masking, and the on-disk feature cache."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from keras_mtl import fileio
from keras_mtl.backend import tf

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FrontEndConfig:
    """One front-end configuration, used for training, evaluation and firmware headers.

    Defaults follow the seed papers: 16 kHz, 128 ms Hann window, 10 ms hop, 128 mel bands,
    power spectrum, natural log with a floor. Frames are centred (the signal is zero-padded
    by half a window on both sides), so frame ``i`` is centred at ``i * hop`` samples.
    """

    sample_rate: int = 16000
    window_length: int = 2048
    hop_length: int = 160
    fft_length: int = 2048
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None
    log_floor: float = 1e-6
    center: bool = True

    def __post_init__(self):
        if self.window_length > self.fft_length:
            raise ValueError("window_length must not exceed fft_length")
        if self.hop_length <= 0 or self.n_mels <= 0 or self.sample_rate <= 0:
            raise ValueError("sample_rate, hop_length and n_mels must be positive")

    @property
    def upper_edge_hz(self) -> float:
        return float(self.f_max if self.f_max is not None else self.sample_rate / 2)

    @property
    def frame_seconds(self) -> float:
        return self.hop_length / self.sample_rate

    def n_frames(self, n_samples: int) -> int:
        """Number of feature frames for a signal of ``n_samples`` samples."""
        if self.center:
            return 1 + n_samples // self.hop_length
        return max(0, 1 + (n_samples - self.window_length) // self.hop_length)

    def fingerprint(self) -> str:
        """Short stable hash of the configuration (the feature-cache key)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


def mel_weight_matrix(config: FrontEndConfig) -> np.ndarray:
    """The (fft_length // 2 + 1, n_mels) HTK-mel triangular filterbank used by the front end."""
    matrix = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=config.n_mels,
        num_spectrogram_bins=config.fft_length // 2 + 1,
        sample_rate=config.sample_rate,
        lower_edge_hertz=config.f_min,
        upper_edge_hertz=config.upper_edge_hz,
        dtype=tf.float64,
    )
    return matrix.numpy()


class LogMel:
    """Waveform (samples,) or (batch, samples) at ``config.sample_rate`` -> log-mel (..., frames, n_mels)."""

    def __init__(self, config: FrontEndConfig):
        self.config = config
        self._mel = tf.constant(mel_weight_matrix(config), dtype=tf.float32)
        self._fn = tf.function(self._compute, reduce_retracing=True)

    def _compute(self, waveform):
        cfg = self.config
        waveform = tf.convert_to_tensor(waveform, tf.float32)
        if cfg.center:
            pad = cfg.fft_length // 2
            paddings = [[0, 0]] * (len(waveform.shape) - 1) + [[pad, pad]]
            waveform = tf.pad(waveform, paddings)
        stft = tf.signal.stft(
            waveform,
            frame_length=cfg.window_length,
            frame_step=cfg.hop_length,
            fft_length=cfg.fft_length,
            window_fn=tf.signal.hann_window,
            pad_end=False,
        )
        power = tf.math.real(stft) ** 2 + tf.math.imag(stft) ** 2
        mel = tf.tensordot(power, self._mel, axes=1)
        return tf.math.log(tf.maximum(mel, cfg.log_floor))

    def __call__(self, waveform) -> np.ndarray:
        return self._fn(np.asarray(waveform, dtype=np.float32)).numpy()


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """SpecAugment-style masking, applied to training batches only.

    Each example gets ``n_time_masks`` masks of up to ``time_mask_ratio`` of its frames and
    ``n_freq_masks`` masks of up to ``freq_mask_ratio`` of its mel bands, filled with the
    example's mean value.
    """

    time_mask_ratio: float = 0.15
    freq_mask_ratio: float = 0.15
    n_time_masks: int = 1
    n_freq_masks: int = 1


def spec_augment(features, config: AugmentConfig, seed=None):
    """Mask one example ``(frames, n_mels)``; a tf function usable inside ``tf.data.map``."""
    features = tf.convert_to_tensor(features)
    n_frames = tf.shape(features)[0]
    n_mels = tf.shape(features)[1]
    fill = tf.reduce_mean(features)
    keep = tf.ones_like(features, dtype=tf.bool)

    def band_mask(length, ratio, count, axis):
        mask = tf.zeros([length], dtype=tf.bool)
        max_width = tf.cast(tf.math.floor(tf.cast(length, tf.float32) * ratio), tf.int32)
        positions = tf.range(length)
        for _ in range(count):
            width = tf.random.uniform([], 0, max_width + 1, dtype=tf.int32, seed=seed)
            start = tf.random.uniform([], 0, tf.maximum(length - width, 0) + 1, dtype=tf.int32, seed=seed)
            mask = mask | ((positions >= start) & (positions < start + width))
        return tf.expand_dims(mask, 1 - axis)

    if config.n_time_masks and config.time_mask_ratio > 0:
        keep = keep & ~band_mask(n_frames, config.time_mask_ratio, config.n_time_masks, 0)
    if config.n_freq_masks and config.freq_mask_ratio > 0:
        keep = keep & ~band_mask(n_mels, config.freq_mask_ratio, config.n_freq_masks, 1)
    return tf.where(keep, features, tf.cast(fill, features.dtype))


class FeatureCache:
    """Log-mel features stored once per audio file and front-end config, as float16 ``.npy``.

    The key is the file's absolute path, size and modification time, so an edited file is
    recomputed. Writes go to a temporary file that is then renamed: never half-written.
    """

    def __init__(self, root: str | os.PathLike, config: FrontEndConfig):
        self.config = config
        self.root = Path(root) / config.fingerprint()
        self.root.mkdir(parents=True, exist_ok=True)
        info = self.root / "frontend.json"
        if not info.exists():
            fileio.write_json(info, dataclasses.asdict(config))

    def path_for(self, audio_path: str | os.PathLike, n_samples: int, pad: str = "zeros") -> Path:
        audio_path = Path(audio_path).resolve()
        stat = audio_path.stat()
        key = f"{audio_path}|{stat.st_size}|{stat.st_mtime_ns}|{n_samples}" + ("" if pad == "zeros" else f"|{pad}")
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest[2:]}.npy"

    def load(self, audio_path, n_samples: int, pad: str = "zeros") -> np.ndarray | None:
        path = self.path_for(audio_path, n_samples, pad)
        if not path.exists():
            return None
        try:
            return np.load(path)
        except (OSError, ValueError):
            log.warning("feature cache entry %s is unreadable; recomputing", path)
            return None

    def store(self, audio_path, n_samples: int, features: np.ndarray, pad: str = "zeros") -> None:
        path = self.path_for(audio_path, n_samples, pad)
        path.parent.mkdir(parents=True, exist_ok=True)
        with fileio.atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, features.astype(np.float16))
