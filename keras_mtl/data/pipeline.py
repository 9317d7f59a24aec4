"""From audio items to tf.data pipelines: cached log-mel features, targets, batching.

Features are computed once per file and front-end config (``FeatureCache``); every epoch
after the first reads them from memory (``Dataset.cache``), so no audio is decoded and no
STFT computed again.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from keras_mtl.core.backend import tf
from keras_mtl.core.errors import ConfigError, DataError
from keras_mtl.data.audio import audio_seconds, fix_length, load_audio
from keras_mtl.data.items import AudioItem, windows_of
from keras_mtl.features.augment import AugmentConfig, spec_augment
from keras_mtl.features.cache import FeatureCache
from keras_mtl.features.logmel import FrontEndConfig, LogMel

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TaskSplit:
    """One split of one task, with its features in the cache and its targets in memory."""

    task: object
    split: str
    items: list[AudioItem]
    feature_paths: list[Path]
    targets: list[np.ndarray]
    input_frames: int
    output_frames: int
    frame_seconds: float  # duration of one output frame
    # frame tasks with recordings longer than the task's clip: ``items`` are their windows
    # (keras_mtl.data.items.windows_of), ``recordings[recording_index[i]]`` the recording of item i
    recordings: list[AudioItem] | None = None
    recording_index: list[int] | None = None
    # knowledge distillation: a teacher's outputs per item, shaped as the task's output for one item
    # ((classes,) or (output_frames, classes)); training batches then carry them (key "teacher")
    teacher: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def load_features(self, index: int) -> np.ndarray:
        return np.load(self.feature_paths[index])

    def whole_recordings(self, predictions: list[np.ndarray]) -> tuple[list[np.ndarray], list[AudioItem]]:
        """Per-item predictions (output_frames, classes) -> one prediction per whole recording (its
        windows' frames in order, cut to its duration) and the recording items; as given without windows."""
        if self.recordings is None:
            return predictions, self.items
        per_window = max(1, int(round(self.task.clip_seconds / self.frame_seconds)))
        parts: list[list[np.ndarray]] = [[] for _ in self.recordings]
        for index, prediction in zip(self.recording_index, predictions):
            parts[index].append(np.asarray(prediction)[:per_window])
        stitched = []
        for recording, windows in zip(self.recordings, parts):
            frames = int(np.ceil(float(recording.duration) / self.frame_seconds - 1e-6))
            stitched.append(np.concatenate(windows, axis=0)[:frames])
        return stitched, self.recordings


class FeatureExtractor:
    """Computes (or finds in the cache) the log-mel features of audio items."""

    def __init__(self, frontend: FrontEndConfig, cache_dir: str | Path):
        self.frontend = frontend
        self.cache = FeatureCache(cache_dir, frontend)
        self._logmel = LogMel(frontend)

    def prepare(
        self, task, split: str, items: list[AudioItem], time_pool_factor: int, ceil_frames: bool = False
    ) -> TaskSplit:
        """``time_pool_factor``: input frames per output frame; ``ceil_frames``: the model rounds the
        output frame count up (strided 'same' convolutions) instead of down (pooling)."""
        n_samples = int(round(task.clip_seconds * self.frontend.sample_rate))
        input_frames = self.frontend.n_frames(n_samples)
        output_frames = -(-input_frames // time_pool_factor) if ceil_frames else input_frames // time_pool_factor
        frame_seconds = self.frontend.frame_seconds * time_pool_factor
        recordings = recording_index = None
        if task.level == "frame" and all(item.events is not None for item in items):
            # strongly labelled recordings longer than the clip become windows: trained on and scored whole
            recordings = [
                dataclasses.replace(item, duration=item.duration or audio_seconds(item.path)) for item in items
            ]
            windows = [windows_of(item, task.clip_seconds, item.duration) for item in recordings]
            if any(len(w) > 1 for w in windows):
                items = [window for group in windows for window in group]
                recording_index = [r for r, group in enumerate(windows) for _ in group]
                log.info(
                    "%s/%s: %d recordings longer than %.1f s split into %d windows of %.1f s (scored whole)",
                    task.display,
                    split,
                    sum(len(w) > 1 for w in windows),
                    task.clip_seconds,
                    len(items),
                    task.clip_seconds,
                )
            else:
                items, recordings = recordings, None
        paths = []
        computed = padded = cut = 0
        audio, audio_path = None, None
        bar = tqdm(items, desc=f"features {task.display}/{split}", unit="clip", disable=None, leave=False)
        for item in bar:
            start = int(round(item.offset * self.frontend.sample_rate))
            try:
                path = self.cache.path_for(item.path, n_samples, task.pad_mode, start)
            except FileNotFoundError:
                raise DataError(f"{item.path}: audio file not found") from None
            if not path.exists():
                if audio_path != item.path:  # the windows of one recording load it once
                    audio, audio_path = load_audio(item.path, self.frontend.sample_rate), item.path
                piece = audio[start:]
                padded += len(piece) < n_samples
                cut += len(piece) > n_samples and recordings is None
                self.cache.store(
                    item.path,
                    n_samples,
                    self._logmel(fix_length(piece, n_samples, task.pad_mode)),
                    task.pad_mode,
                    start,
                )
                computed += 1
            paths.append(path)
        bar.close()
        log.info(
            "%s/%s: %d clips (%d features computed, %d from cache)",
            task.display,
            split,
            len(items),
            computed,
            len(items) - computed,
        )
        if padded:
            log.info(
                "%s/%s: %d clips shorter than %.2f s padded (%s)",
                task.display,
                split,
                padded,
                task.clip_seconds,
                task.pad_mode,
            )
        if cut:  # clip tasks: one label per clip; the first clip_seconds of a longer file stand for it
            log.info(
                "%s/%s: %d clips longer than %.2f s: their first %.2f s are used (the clip-task policy; "
                "a manifest task's length is set with :seconds=S)",
                task.display,
                split,
                cut,
                task.clip_seconds,
                task.clip_seconds,
            )
        targets = [task.target(item, output_frames, frame_seconds) for item in items]
        return TaskSplit(
            task, split, items, paths, targets, input_frames, output_frames, frame_seconds, recordings, recording_index
        )


def feature_statistics(splits: list[TaskSplit], max_clips: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Per-mel-band mean and variance over (a deterministic subset of) the training features."""
    total, total_sq, count = 0.0, 0.0, 0
    for split in splits:
        step = max(1, len(split) // max_clips)
        for index in range(0, len(split), step):
            x = split.load_features(index).astype(np.float64)
            total = total + x.sum(axis=0)
            total_sq = total_sq + (x**2).sum(axis=0)
            count += x.shape[0]
    mean = total / count
    var = total_sq / count - mean**2
    # Bands with (almost) no variance -- e.g. above the Nyquist frequency of 8 kHz recordings,
    # where only resampling residue lives -- must not be blown up by the normalisation.
    var = np.maximum(var, max(1e-6, 0.01 * float(np.median(var))))
    return mean.astype(np.float32), var.astype(np.float32)


def _feature_dataset(split: TaskSplit, targets: list, target_signature) -> tf.data.Dataset:
    """Cached (float32 features, target) pairs of one split."""
    n_mels = split.load_features(0).shape[1]

    def generate():
        for index in range(len(split)):
            yield split.load_features(index), targets[index]

    dataset = tf.data.Dataset.from_generator(
        generate,
        output_signature=(tf.TensorSpec(shape=(split.input_frames, n_mels), dtype=tf.float16), target_signature),
    ).cache()
    return dataset.map(
        lambda features, target: (tf.cast(features, tf.float32), target), num_parallel_calls=tf.data.AUTOTUNE
    )


def _training_batches(dataset, size: int, batch_size: int, augment: AugmentConfig | None, seed: int):
    dataset = dataset.shuffle(size, seed=seed, reshuffle_each_iteration=True)
    if augment is not None:
        dataset = dataset.map(
            lambda features, target: (spec_augment(features, augment), target), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.repeat().batch(batch_size, drop_remainder=size >= batch_size)


def make_dataset(
    split: TaskSplit,
    batch_size: int,
    training: bool,
    augment: AugmentConfig | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """(features, target) batches. Training: cached, shuffled each epoch, masked, repeated forever; with
    teacher outputs (``split.teacher``) the targets are ``{"target": target, "teacher": outputs}``."""
    signature = split.task.target_spec(split.output_frames)
    targets = split.targets
    if training and split.teacher is not None:
        targets = [{"target": t, "teacher": s} for t, s in zip(split.targets, split.teacher)]
        signature = {"target": signature, "teacher": _teacher_spec(split)}
    dataset = _feature_dataset(split, targets, signature)
    if training:
        dataset = _training_batches(dataset, len(split), batch_size, augment, seed)
    else:
        dataset = dataset.batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _teacher_spec(split: TaskSplit) -> tf.TensorSpec:
    return tf.TensorSpec(np.shape(split.teacher[0]), tf.float32)


def weak_target(item: AudioItem, classes) -> np.ndarray:
    """Clip-level multi-hot tags of a weakly labelled item."""
    target = np.zeros(len(classes), np.float32)
    for tag in item.tags or ():
        target[classes.index(tag)] = 1.0
    return target


def make_semi_supervised_dataset(
    strong: TaskSplit,
    weak: TaskSplit | None,
    unlabeled: TaskSplit | None,
    batch_sizes: tuple,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    strong_real: TaskSplit | None = None,
) -> tf.data.Dataset:
    """Semi-supervised training batches of a frame task: each batch holds ``batch_sizes`` =
    (strong, weak, unlabeled[, strong real]) items in that order (a size of 0 or a missing split:
    none), with targets ``{"strong": (B, T, C) frame labels (zeros where unknown), "weak": (B, C)
    clip tags (strong items: any frame active), "role": (B,) 0 strong / 1 weak / 2 unlabeled /
    3 strong real}``, and ``"teacher"``: (B, T, C) a teacher's frame outputs when every split has them
    (``TaskSplit.teacher``)."""
    task = strong.task
    n_frames, n_classes = strong.output_frames, task.n_classes
    signature = {
        "strong": tf.TensorSpec((n_frames, n_classes), tf.float32),
        "weak": tf.TensorSpec((n_classes,), tf.float32),
        "role": tf.TensorSpec((), tf.int32),
    }
    used = [s for s, size in zip((strong, weak, unlabeled, strong_real), batch_sizes) if s is not None and size > 0]
    distilled = bool(used) and all(s.teacher is not None for s in used)
    if distilled:
        signature["teacher"] = _teacher_spec(strong)
    no_frames = np.zeros((n_frames, n_classes), np.float32)
    parts = []
    for role, (split, size) in enumerate(zip((strong, weak, unlabeled, strong_real), batch_sizes)):
        if split is None or size <= 0:
            continue
        if role in (0, 3):
            targets = [{"strong": t, "weak": t.max(axis=0), "role": np.int32(role)} for t in split.targets]
        elif role == 1:
            targets = [
                {"strong": no_frames, "weak": weak_target(item, task.classes), "role": np.int32(1)}
                for item in split.items
            ]
        else:
            targets = [
                {"strong": no_frames, "weak": np.zeros(n_classes, np.float32), "role": np.int32(2)} for _ in split.items
            ]
        if distilled:
            targets = [{**t, "teacher": s} for t, s in zip(targets, split.teacher)]
        dataset = _feature_dataset(split, targets, signature)
        parts.append(_training_batches(dataset, len(split), size, augment, seed + role))
    if not parts:
        raise ConfigError(f"task {task.display}: every part of its semi-supervised batches is empty")
    if len(parts) == 1:
        return parts[0].prefetch(tf.data.AUTOTUNE)

    def concatenate(*batches):
        features = tf.concat([b[0] for b in batches], axis=0)
        targets = {key: tf.concat([b[1][key] for b in batches], axis=0) for key in signature}
        return features, targets

    return tf.data.Dataset.zip(tuple(parts)).map(concatenate).prefetch(tf.data.AUTOTUNE)
