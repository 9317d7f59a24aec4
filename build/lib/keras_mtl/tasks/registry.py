"""Task registry: what each task predicts, its loss, its targets and its DCASE metrics.

A task is clip level (one softmax class per clip; decoder: temporal attention + linear) or
frame level (multi-label sigmoid per output frame; decoder: GRU). New tasks register with
``register_task``; the model builder, strategies and metrics use only this interface.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.data.items import AudioItem
from keras_mtl.data.readers import common_voice, desed, speech_commands, tau22, vad
from keras_mtl.data.readers import manifest as manifest_io
from keras_mtl.tasks import metrics


@dataclasses.dataclass(frozen=True)
class Task:
    """Common task description. ``corpus`` names the reader in ``keras_mtl.data.readers.corpora``."""

    name: str
    classes: tuple[str, ...]
    clip_seconds: float
    corpus: str
    train_split: str
    test_split: str
    description: str = ""
    source: str | None = None  # manifest file of a user-defined task
    weak_split: str | None = None  # split of weakly labelled clips (frame tasks; mean teacher)
    unlabeled_split: str | None = None  # split of unlabelled clips (frame tasks; mean teacher)
    strong_real_split: str | None = None  # more strongly labelled clips of another origin (frame tasks; optional)
    title: str = ""  # the name as the user wrote it (metrics.json, logs); ``name`` is its safe form

    level = "clip"

    @property
    def display(self) -> str:
        """The user's text for the task (``title``), else its name."""
        return self.title or self.name

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@dataclasses.dataclass(frozen=True)
class ClipClassificationTask(Task):
    """One class per clip: softmax cross-entropy, accuracy. Short clips are padded by repetition."""

    level = "clip"
    pad_mode = "repeat"

    def target(self, item: AudioItem, n_frames: int, frame_seconds: float) -> np.ndarray:
        return np.asarray(self.classes.index(item.label), dtype=np.int32)

    def target_spec(self, n_frames: int) -> tf.TensorSpec:
        return tf.TensorSpec(shape=(), dtype=tf.int32)

    def loss(self, y_true, y_pred):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y_true, y_pred))

    def keras_metrics(self) -> list:
        return [keras.metrics.SparseCategoricalAccuracy(name=f"{self.name}_accuracy")]

    def evaluate(self, predictions: list[np.ndarray], items: list[AudioItem], frame_seconds: float, **options) -> dict:
        y_true = np.asarray([self.classes.index(item.label) for item in items])
        return metrics.classification_metrics(y_true, np.stack(predictions), self.classes)

    headline = "accuracy"


@dataclasses.dataclass(frozen=True)
class FrameDetectionTask(Task):
    """Multi-label activity per output frame: binary cross-entropy, DCASE event/segment F1, PSDS1."""

    level = "frame"
    pad_mode = "zeros"
    median_filter_frames: int = 7
    threshold: float = 0.5

    def target(self, item: AudioItem, n_frames: int, frame_seconds: float) -> np.ndarray:
        return metrics.events_to_frames(item.events or (), self.classes, n_frames, frame_seconds)

    def target_spec(self, n_frames: int) -> tf.TensorSpec:
        return tf.TensorSpec(shape=(n_frames, self.n_classes), dtype=tf.float32)

    def loss(self, y_true, y_pred):
        return tf.reduce_mean(keras.losses.binary_crossentropy(y_true, y_pred))

    def keras_metrics(self) -> list:
        return [metrics.FrameF1(name=f"{self.name}_frame_f1")]

    def evaluate(self, predictions: list[np.ndarray], items: list[AudioItem], frame_seconds: float, **options) -> dict:
        return metrics.sed_metrics(
            predictions,
            items,
            self.classes,
            frame_seconds,
            clip_seconds=self.clip_seconds,
            median_filter_frames=self.median_filter_frames,
            threshold=self.threshold,
            **options,
        )

    headline = "event_f1_macro"


@dataclasses.dataclass(frozen=True)
class ActivityDetectionTask(FrameDetectionTask):
    """Frame-level activity (e.g. voice activity): headline metric is frame ROC-AUC (seed 001)."""

    headline = "frame_roc_auc"


_REGISTRY: dict[str, Callable[[], Task]] = {}


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Make ``name`` usable in ``--task-set``. ``factory()`` returns the Task."""
    _REGISTRY[name] = factory


def known_tasks() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    name = name.strip().lower()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(known_tasks())})")
    return _REGISTRY[name]()


def safe_name(text: str) -> str:
    """The form of a user's task name that TensorFlow scopes, file names and C identifiers accept:
    ASCII letters folded, lower case, every other run of characters ``_``; never empty, never starting
    with a digit ('door knock' -> 'door_knock', '2nd mic' -> 'task_2nd_mic', 'стук' -> 'task_<hash>')."""
    folded = unicodedata.normalize("NFKD", text.strip()).encode("ascii", "ignore").decode()
    key = re.sub(r"[^0-9a-z_]+", "_", folded.lower()).strip("_")
    if not key:
        return "task_" + hashlib.sha1(text.strip().encode()).hexdigest()[:8]
    return "task_" + key if key[0].isdigit() else key


def parse_task_set(spec: str, custom: dict | None = None) -> list[Task]:
    """'asc,sed' -> [Task, Task]; unknown or repeated names are errors. ``custom`` as in ``resolve_tasks``."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise ConfigError("empty --task-set (give e.g. asc,sed)")
    return resolve_tasks(names, custom)


def resolve_tasks(names, custom: dict | None = None) -> list[Task]:
    """Tasks by name (built-in, or a user's name as written or in its ``safe_name`` form); ``custom``
    maps a user's task name to a task spec ``{"level": "clip"|"frame"|LAYOUT, "source": manifest or
    folder, "seconds": float|None, "classes": [..]|None}`` (``manifest_task``, ``corpus_task``).
    ConfigError, before any data is read, for unknown or repeated names and for two names with one safe form."""
    custom = custom or {}
    defined: dict[str, str] = {}
    for text in custom:
        key = safe_name(text)
        if key in defined:
            raise ConfigError(
                f"--task names {defined[key]!r} and {text!r} both become {key!r} where TensorFlow, file "
                "and C names are needed; rename one"
            )
        defined[key] = text
    keys = [safe_name(str(name)) for name in names]
    for key in keys:
        if keys.count(key) > 1:
            repeated = [str(n) for n, k in zip(names, keys) if k == key]
            raise ConfigError(f"task {' / '.join(map(repr, repeated))} repeated in the task set")
    unused = set(defined) - set(keys)
    if unused:
        raise ConfigError(
            f"--task defines {', '.join(sorted(defined[k] for k in unused))} but --task-set does not use it"
        )
    tasks = []
    for key in keys:
        if key in defined:
            spec = custom[defined[key]]
            level, source = spec.get("level", "clip"), spec.get("source", spec.get("manifest"))
            make = corpus_task if level in LAYOUTS else manifest_task
            tasks.append(make(defined[key], level, source, spec.get("seconds"), spec.get("classes")))
        else:
            tasks.append(get_task(key))
    return tasks


def manifest_task(name: str, level: str, manifest, seconds: float | None = None, classes=None) -> Task:
    """A user-defined task read from a manifest (see ``keras_mtl.data.readers.manifest``). ``name``: the
    user's text (kept as ``title``; ``safe_name`` of it is the task's name). ``classes``: the label set and
    its order (default: the labels found, sorted); ConfigError for a label outside it."""
    if level not in ("clip", "frame"):
        raise ConfigError(
            f"task {name}: {level!r} is neither a manifest level (clip, frame) nor a corpus layout "
            f"({', '.join(LAYOUTS)})"
        )
    path = Path(manifest)
    items = manifest_io.read_clip_manifest(path) if level == "clip" else manifest_io.read_frame_manifest(path)
    for split in ("train", "test"):
        if not items[split]:
            raise ConfigError(f"task {name}: manifest {path} has no {split} clips")
    classes = _label_set(name, path, manifest_io.manifest_classes(items, level), classes)
    if level == "clip" and len(classes) < 2:
        raise ConfigError(f"task {name}: manifest {path} has fewer than two labels")
    if level == "frame" and not classes:
        raise ConfigError(f"task {name}: manifest {path} has no events")
    clip_seconds = float(seconds) if seconds else manifest_io.clip_seconds_for(items)
    cls = ClipClassificationTask if level == "clip" else FrameDetectionTask
    return cls(
        name=safe_name(name),
        title=name,
        classes=classes,
        clip_seconds=clip_seconds,
        corpus=f"manifest_{level}",
        train_split="train",
        test_split="test",
        description=f"user task from {path}",
        source=str(path),
    )


def _label_set(name: str, source: Path, found: tuple[str, ...], fixed) -> tuple[str, ...]:
    """``fixed`` (the user's label set and order) if every label found is in it, else ``found``."""
    if not fixed:
        return found
    fixed = tuple(fixed)
    if len(set(fixed)) != len(fixed):
        raise ConfigError(f"task {name}: a class is repeated in classes={','.join(fixed)}")
    outside = [c for c in found if c not in fixed]
    if outside:
        raise ConfigError(
            f"task {name}: {source} has label(s) {', '.join(map(repr, outside))} outside its classes ({', '.join(fixed)})"
        )
    return fixed


# corpus layouts a user task can be defined over (--task NAME=LAYOUT:DIR): the built-in task whose
# splits, clip length and decoder it takes, and how its label set is read from the data
LAYOUTS = {
    "tau22": ("asc", tau22.scene_labels),
    "desed": ("sed", desed.event_labels),
    "speech_commands": ("scr", speech_commands.words_in),
}


def corpus_task(name: str, layout: str, root, seconds: float | None = None, classes=None) -> Task:
    """A task over a folder in a published corpus layout whose labels are the data's own (another
    scene set, another event set or edition, Speech Commands v1): everything of the layout is kept
    (weak and unlabelled splits, mean teacher, durations, folds); ``classes`` fixes the set and order
    (default: the labels found, sorted). ConfigError for an unknown layout or a folder without labels."""
    if layout not in LAYOUTS:
        raise ConfigError(f"task {name}: unknown corpus layout {layout!r} (known: {', '.join(LAYOUTS)})")
    builtin, labels_of = LAYOUTS[layout]
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"task {name}: {root} is not a folder (a {layout} layout is a folder)")
    found = labels_of(root)
    if not found:
        raise ConfigError(f"task {name}: no labels found in {root} ({layout} layout)")
    classes = _label_set(name, root, found, classes)
    if builtin != "sed" and len(classes) < 2:
        raise ConfigError(f"task {name}: {root} has fewer than two labels")
    template = get_task(builtin)
    return dataclasses.replace(
        template,
        name=safe_name(name),
        title=name,
        classes=classes,
        clip_seconds=float(seconds) if seconds else template.clip_seconds,
        description=f"{template.description.split(' (')[0]} over {root} ({len(classes)} classes from the data)",
        source=str(root),
    )


def _builtin(cls, **fields) -> Callable[[], Task]:
    fields = {"train_split": "train", "test_split": "test", **fields}
    return lambda: cls(**fields)


# name, task class, classes, clip seconds, corpus reader, description (+ task options)
for _name, _cls, _classes, _seconds, _corpus, _description, _options in (
    (
        "asc",
        ClipClassificationTask,
        tau22.SCENES,
        1.0,
        "tau22",
        "acoustic scene classification (TAU Urban Acoustic Scenes 2022 Mobile, 10 scenes)",
        {},
    ),
    (
        "sed",
        FrameDetectionTask,
        desed.CLASSES,
        10.0,
        "desed",
        "sound event detection (DESED, 10 domestic classes)",
        {
            "train_split": "synthetic_train",
            "test_split": "validation",
            "weak_split": "weak",
            "unlabeled_split": "unlabeled",
            "strong_real_split": "strong_real",
        },
    ),
    (
        "scr",
        ClipClassificationTask,
        speech_commands.WORDS,
        1.0,
        "speech_commands",
        "spoken command recognition (Speech Commands v2, 35 words)",
        {},
    ),
    (
        "gc",
        ClipClassificationTask,
        common_voice.GENDERS,
        3.0,
        "common_voice_gender",
        "speaker gender classification (Common Voice)",
        {},
    ),
    (
        "ac",
        ClipClassificationTask,
        common_voice.AGE_GROUPS,
        3.0,
        "common_voice_age",
        "speaker age group: under 30, 30-60, over 60 (Common Voice, regrouped as in seed 001)",
        {},
    ),
    (
        "vad",
        ActivityDetectionTask,
        vad.CLASSES,
        4.0,
        "vad",
        "voice activity detection (speech placed in noise, frame labels)",
        {"median_filter_frames": 5},
    ),
):
    register_task(
        _name,
        _builtin(
            _cls,
            name=_name,
            classes=_classes,
            clip_seconds=_seconds,
            corpus=_corpus,
            description=_description,
            **_options,
        ),
    )
