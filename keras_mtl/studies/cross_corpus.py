"""Two tasks from two real corpora: the benchmark of the cross-corpus problem (issue 28).

Built from the small real recordings of ``shared/data/real-mini`` (never copied into the repo):

``keywords`` (frame task)  10 s, 16 kHz recordings of real background noise (cafe, street, train
                           snippets; cafe, fridge, traffic takes) with one to three Speech Commands
                           words (``zero``, ``right``, ``nine``) at 0-12 dB SNR, the mixture at about
                           -26 dBFS: strong labels (onset, offset of each word's voiced part). Split by
                           the words' speakers.
``digits`` (clip task)     Free Spoken Digit Dataset: ten digits, studio speech at 8 kHz, scaled to
                           about -19 dBFS; the dataset's own split (takes 0-4 test).

The two corpora differ as real ones do: level (7 dB), sample rate and band limit (8 vs 16 kHz), room
and microphone, speech alone vs speech in noise. Both tasks are manifests (``--task NAME=frame:...``,
``--task NAME=clip:...``), so every row trains through the same ``train`` as a user's run.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from keras_mtl.core import fileio, paths
from keras_mtl.core.backend import keras
from keras_mtl.core.errors import DataError
from keras_mtl.data.pipeline import make_dataset
from keras_mtl.models.joint import JointForward
from keras_mtl.models.mtl import task_submodel
from keras_mtl.runs.folder import METRICS, open_run
from keras_mtl.runs.inputs import prepare_data
from keras_mtl.training.evaluate import evaluate_task

log = logging.getLogger(__name__)

TASKS = ("keywords", "digits")
WORDS = ("zero", "right", "nine")
REPORT = "normalization.json"
REPORT_VERSION = 2  # 2: calibrated runs scored with the test mixture's pooled statistics too
SECONDS = 10.0
RATE = 16000
FRAME_LEVEL_DBFS = -26.0
CLIP_LEVEL_DBFS = -19.0
TEST_SHARE = 0.25


def _rms_db(x: np.ndarray) -> float:
    return 20.0 * np.log10(np.sqrt(np.mean(np.square(x))) + 1e-12)


def _scaled(x: np.ndarray, level_db: float) -> np.ndarray:
    return (x * 10.0 ** ((level_db - _rms_db(x)) / 20.0)).astype(np.float32)


def _read_mono(path: Path) -> tuple[np.ndarray, int]:
    x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return x.mean(axis=1), rate


def voiced_span(x: np.ndarray, rate: int, floor_db: float = -25.0) -> tuple[int, int]:
    """First and last sample of the 10 ms frames within ``floor_db`` of the loudest frame."""
    hop = rate // 100
    frames = x[: len(x) // hop * hop].reshape(-1, hop)
    energy = 10.0 * np.log10(np.mean(np.square(frames), axis=1) + 1e-12)
    loud = np.flatnonzero(energy > energy.max() + floor_db)
    return int(loud[0] * hop), int((loud[-1] + 1) * hop)


def _is_test(key: str) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < TEST_SHARE


def _background(rng: np.random.Generator, long_takes: list, snippets: list) -> np.ndarray:
    """10 s of real background: a circularly shifted long take, or ten 1 s snippets of one class."""
    n = int(SECONDS * RATE)
    if long_takes and rng.random() < 0.3:
        take = long_takes[rng.integers(len(long_takes))]
        return np.roll(np.resize(take, n), rng.integers(n))
    group = snippets[rng.integers(len(snippets))]
    pieces = [group[i] for i in rng.integers(len(group), size=int(SECONDS) + 1)]
    return np.concatenate([p[:RATE] for p in pieces])[:n]


def build(
    real_mini: str | Path, out: str | Path, n_train: int = 240, n_test: int = 80, digit_takes: int = 8, seed: int = 0
) -> dict:
    """Write both corpora under ``out`` and return their task definitions ({name: custom task spec}).

    Deterministic from ``seed``; a folder already built with the same settings is reused (its
    ``built.txt`` names them). ``digit_takes``: training takes per speaker and digit (takes 5 to
    4 + digit_takes; the test split is always takes 0-4). Raises DataError when ``real_mini`` lacks the recordings."""
    real_mini, out = Path(real_mini), Path(out)
    stamp = (
        f"real_mini={real_mini.resolve()} n_train={n_train} n_test={n_test} digit_takes={digit_takes} seed={seed} v1\n"
    )
    tasks = {
        "keywords": {"level": "frame", "source": str(out / "keywords" / "strong.csv"), "seconds": SECONDS},
        "digits": {"level": "clip", "source": str(out / "digits" / "digits.csv"), "seconds": 1.0},
    }
    if (out / "built.txt").is_file() and (out / "built.txt").read_text() == stamp:
        return tasks
    words = {w: sorted((real_mini / "speech_commands_subset" / w).glob("*.wav")) for w in WORDS}
    digits = sorted((real_mini / "fsdd" / "recordings").glob("*.wav"))
    long_takes = sorted((real_mini / "backgrounds" / "long_10s").glob("*.wav"))
    groups = [sorted(d.glob("*.wav")) for d in sorted((real_mini / "backgrounds" / "clips_1s").iterdir()) if d.is_dir()]
    if not digits or not all(words.values()) or not any(groups):
        raise DataError(
            f"{real_mini}: expected fsdd/recordings, speech_commands_subset/{{{','.join(WORDS)}}} and backgrounds/"
        )
    rng = np.random.default_rng(seed)
    takes = [_read_mono(p)[0] for p in long_takes]
    snippets = [[_read_mono(p)[0] for p in g] for g in groups if g]
    word_audio = {split: [] for split in ("train", "test")}
    for word, files in words.items():
        for path in files:
            x, _ = _read_mono(path)
            start, stop = voiced_span(x, RATE)
            split = "test" if _is_test(path.name.split("_")[0]) else "train"  # speaker id
            word_audio[split].append((word, x[start:stop]))

    rows = []
    folder = out / "keywords" / "audio"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_train), ("test", n_test)):
        for index in range(count):
            mix = _background(rng, takes, snippets)
            noise_db = _rms_db(mix)
            name = f"{split}_{index:04d}.wav"
            events = []
            for _ in range(rng.integers(1, 4)):
                word, clip = word_audio[split][rng.integers(len(word_audio[split]))]
                onset = int(rng.integers(0, len(mix) - len(clip)))
                if any(
                    onset < stop + RATE // 10 and onset + len(clip) > start - RATE // 10 for start, stop, _ in events
                ):
                    continue  # no overlaps: one word at a time
                mix[onset : onset + len(clip)] += _scaled(clip, noise_db + rng.uniform(0.0, 12.0))
                events.append((onset, onset + len(clip), word))
            mix = _scaled(mix, FRAME_LEVEL_DBFS + rng.uniform(-3.0, 3.0))
            sf.write(str(folder / name), np.clip(mix, -1, 1), RATE, subtype="PCM_16")
            for start, stop, word in sorted(events):
                rows.append(
                    {
                        "filename": f"audio/{name}",
                        "onset": f"{start / RATE:.3f}",
                        "offset": f"{stop / RATE:.3f}",
                        "event_label": word,
                        "split": split,
                    }
                )
    fileio.write_rows(out / "keywords" / "strong.csv", rows)

    folder = out / "digits" / "audio"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in digits:
        digit, _, take = path.stem.split("_")
        if int(take) >= 5 + digit_takes:
            continue
        x, rate = _read_mono(path)
        sf.write(str(folder / path.name), _scaled(x, CLIP_LEVEL_DBFS + rng.uniform(-2.0, 2.0)), rate, subtype="PCM_16")
        rows.append({"filename": f"audio/{path.name}", "label": digit, "split": "test" if int(take) < 5 else "train"})
    fileio.write_rows(out / "digits" / "digits.csv", rows)
    fileio.write_text(out / "built.txt", stamp)
    log.info("cross-corpus data: %d keyword recordings, %d digit clips in %s", n_train + n_test, len(rows), out)
    return tasks


class _BatchStatistics:
    """A task path called with batch normalisation on each batch's own statistics (training mode,
    dropout off, moving averages restored afterwards): how the task was normalised while training with
    per-task statistics. With ``joint`` (a JointForward) and ``others`` ({task: its test batches}),
    each batch goes through the joint forward pass beside a batch of every other task: how it was
    normalised while training with joint statistics."""

    def __init__(self, network, path, task_name=None, joint=None, others=None):
        self.network, self.path, self.task_name, self.joint = network, path, task_name, joint
        self.others = {name: itertools.cycle(batches) for name, batches in (others or {}).items()}

    def __call__(self, features, training=False):
        saved = self.network.get_weights()
        dropouts = [layer for layer in self.network.layers if isinstance(layer, keras.layers.Dropout)]
        rates = [layer.rate for layer in dropouts]
        for layer in dropouts:
            layer.rate = 0.0
        try:
            if self.joint is None:
                return self.path(features, training=True)
            batches = {name: next(batches) for name, batches in self.others.items()}
            return self.joint({self.task_name: features, **batches}, training=True)[self.task_name][self.task_name]
        finally:
            for layer, rate in zip(dropouts, rates):
                layer.rate = rate
            self.network.set_weights(saved)


def _task_figures(metrics: dict) -> dict:
    keys = ("accuracy", "frame_roc_auc", "segment_f1_macro", "event_f1_macro")
    return {key: float(metrics[key]) for key in keys if key in metrics}


def first_bn_shift(network, data, tc) -> dict:
    """Per task: how far its test batches' mean at the first batch normalisation lies from the moving
    mean the deployed network uses, in moving standard deviations (mean over channels)."""
    layer = next((layer for layer in network.layers if isinstance(layer, keras.layers.BatchNormalization)), None)
    if layer is None:
        return {}
    probe = keras.Model(network.input, layer.input)
    moving_mean = np.asarray(layer.moving_mean)
    moving_std = np.sqrt(np.asarray(layer.moving_variance) + layer.epsilon)
    shifts = {}
    for name, split in data.test.items():
        means = [
            np.asarray(probe(features, training=False)).reshape(-1, moving_mean.size).mean(axis=0)
            for features, _ in make_dataset(split, tc.batch_for(name), training=False)
        ]
        shifts[name] = float(np.mean(np.abs(np.mean(means, axis=0) - moving_mean) / moving_std))
    return shifts


def normalization_report(run_dir: str | Path) -> dict:
    """A finished run's test figures scored three ways, per task: ``inference`` with the moving averages
    that inference and the export use; ``batch_statistics`` with each test batch's own statistics (how
    per-task statistics trained it); for a joint run with joint or calibrated statistics,
    ``joint_statistics`` with each test batch pooled beside a test batch of every other task: the test
    mixture's own statistics, which joint statistics trained with and which a calibrated run's frozen
    statistics (PreciseBN over the training mixture) estimate. ``gap``: those pooled figures (else each
    batch's own) less inference, in figure units; a large positive gap: the deployed network
    normalises the task unlike the statistics it trained for. Plus the first batch normalisation's
    shift per task (``first_bn_shift``)."""
    run = open_run(run_dir)
    data = prepare_data(run.config, run.tasks)
    network = run.network()
    tc = run.config.training
    joint = run.config.batch_norm in ("joint", "calibrated") and len(run.tasks) > 1
    report = {
        "version": REPORT_VERSION,
        "batch_norm": run.config.batch_norm,
        "tasks": {},
        "first_bn_shift": first_bn_shift(network, data, tc),
    }
    batches = {}
    if joint:
        batches = {
            t.name: [x for x, _ in make_dataset(data.test[t.name], tc.batch_for(t.name), training=False)]
            for t in run.tasks
        }
    for task in run.tasks:
        path = task_submodel(network, task.name)
        entry = {
            "inference": _task_figures(evaluate_task(path, task, data, tc)),
            "batch_statistics": _task_figures(evaluate_task(_BatchStatistics(network, path), task, data, tc)),
        }
        trained = "batch_statistics"
        if joint:
            others = {name: b for name, b in batches.items() if name != task.name}
            forward = JointForward(network, {name: [name] for name in batches})
            scored = _BatchStatistics(network, path, task.name, forward, others)
            entry["joint_statistics"] = _task_figures(evaluate_task(scored, task, data, tc))
            trained = "joint_statistics"
        entry["gap"] = {key: entry[trained][key] - entry["inference"][key] for key in entry["inference"]}
        report["tasks"][task.display] = entry
    return report


def real_mini_dir() -> Path:
    """The real recordings: ``$KERAS_MTL_REAL_MINI``, else ``shared/data/real-mini`` beside the checkout."""
    if os.environ.get("KERAS_MTL_REAL_MINI"):
        return Path(os.environ["KERAS_MTL_REAL_MINI"])
    return paths.REPO_ROOT.parent / "shared" / "data" / "real-mini"


def prepare(out: Path) -> dict:
    """The experiment's data under ``out/data`` (built once) as settings: its two custom tasks."""
    source = real_mini_dir()
    if not source.is_dir():
        raise DataError(
            f"{source}: the real recordings are not there (set KERAS_MTL_REAL_MINI to the real-mini folder)"
        )
    return {"custom_tasks": build(source, Path(out) / "data")}


def write_gap_table(out: Path, rows: list, seeds: list) -> None:
    """``gaps.md`` and ``gaps.json``: per row, the seed means of each task's figures scored as
    ``normalization_report`` does and the first batch normalisation's shift per task. Each run's report
    is kept in its folder (``normalization.json``)."""
    table = {}
    for row in rows:
        reports = []
        for seed in seeds:
            folder = Path(out) / "rows" / row.name / f"seed{seed}"
            if not (folder / METRICS).exists():
                continue
            report = json.loads((folder / REPORT).read_text()) if (folder / REPORT).exists() else {}
            if report.get("version") != REPORT_VERSION:  # none yet, or scored as an earlier build did
                report = normalization_report(folder)
                fileio.write_json(folder / REPORT, report)
            reports.append(report)
        if reports:
            table[row.name] = {"label": row.label, "seeds": len(reports), "reports": reports}
    lines = [
        "# Scored with the moving averages (inference) and with each test batch's own statistics",
        "",
        "| row | task | metric | inference | batch statistics | pooled statistics | gap (points) | first-BN shift (std) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in table.items():
        reports = entry["reports"]
        for task in reports[0]["tasks"]:
            shift = np.mean([r["first_bn_shift"].get(task, np.nan) for r in reports])
            for metric in reports[0]["tasks"][task]["inference"]:
                inference = np.mean([r["tasks"][task]["inference"][metric] for r in reports])
                batch = np.mean([r["tasks"][task]["batch_statistics"][metric] for r in reports])
                joint = [
                    r["tasks"][task]["joint_statistics"][metric]
                    for r in reports
                    if "joint_statistics" in r["tasks"][task]
                ]
                gap = np.mean([r["tasks"][task]["gap"][metric] for r in reports])
                lines.append(
                    f"| {entry['label']} | {task} | {metric} | {inference:.3f} | {batch:.3f} | "
                    f"{f'{np.mean(joint):.3f}' if joint else '-'} | {100 * gap:+.1f} | {shift:.2f} |"
                )
    lines += [
        "",
        f"Means over the finished seeds of {', '.join(map(str, seeds))}. pooled statistics: each test batch beside a "
        "test batch of every other task, the test mixture's own statistics (joint and calibrated runs). gap: the "
        "pooled figure where there is one, else each batch's own, less inference, in points; positive: the "
        "deployed network normalises the task unlike the statistics it trained for. first-BN shift: the task's test mean at the first batch "
        "normalisation from the moving mean, in moving standard deviations.",
    ]
    fileio.write_json(Path(out) / "gaps.json", table)
    fileio.write_text(Path(out) / "gaps.md", "\n".join(lines) + "\n")
