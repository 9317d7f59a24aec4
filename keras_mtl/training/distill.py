"""Knowledge distillation: the teachers' outputs for every training clip, computed once per clip.

A student run distils from finished keras-mtl runs (``--teacher RUN``, repeatable: single-task runs,
the default joint run, a larger preset) or from outputs computed elsewhere (``--teacher-outputs DIR``:
PaSST, BEATs, an ensemble). Each task's loss becomes task loss + λ · distillation loss
(keras_mtl.training.losses.distillation_loss: KL at temperature T for single-label clip tasks, binary
cross-entropy to the teacher's probabilities for multi-label and frame tasks).

Teacher outputs are computed once per training clip, on the clip as the corpus holds it (not on each
augmented batch): a teacher's forward pass on every batch would cost as much as the student's step,
and teachers outside keras-mtl can only be used this way. A run's teacher sees the clip through its
own front end (its mel bands, hop, architecture); its frame outputs are resampled to the student's
output frames. Several teachers of one task are averaged (an ensemble).

Teacher-outputs folder (``--teacher RUN`` writes one into the student's run folder,
``teacher_outputs/``, which ``--resume`` reuses)::

    DIR/teacher.json       {"tasks": {"<task>": {"level": "clip" | "frame", "classes": ["...", ...]}},
                            "teachers": [...]}      (what made it; optional)
    DIR/<task>/<clip>.npy  float32 probabilities for one training clip:
                           clip task (C,): softmax outputs (single-label) or per-class sigmoids;
                           frame task (F, C): F frames evenly over the clip, any F

``<clip>``: the clip's key as the corpus reader names it (for the built-in readers its path inside the
corpus folder, e.g. ``audio/bus-lyon-1-10-a.wav``; a window of a longer recording ``<key>@<start>s``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from keras_mtl.core import fileio
from keras_mtl.core.backend import tf
from keras_mtl.core.errors import ConfigError, DataError
from keras_mtl.core.paths import default_cache_dir
from keras_mtl.data.pipeline import FeatureExtractor, TaskSplit
from keras_mtl.models.mtl import task_submodel
from keras_mtl.runs.folder import open_run
from keras_mtl.runs.network import time_resolution

log = logging.getLogger(__name__)

DESCRIPTION = "teacher.json"


def clip_file(folder: Path, task_name: str, key: str) -> Path:
    """Where a clip's outputs lie in a teacher-outputs folder (the key kept inside the folder)."""
    parts = [p for p in str(key).replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return folder / task_name / Path(*parts[:-1], parts[-1] + ".npy") if parts else folder / task_name / "_.npy"


def _describe(task) -> dict:
    return {"level": task.level, "classes": list(task.classes)}


def _mismatch(source: str, task, theirs: dict) -> str | None:
    if theirs.get("level") != task.level:
        return f"{source}: task {task.name} is a {theirs.get('level')}-level task there, a {task.level}-level one here"
    if list(theirs.get("classes", [])) != list(task.classes):
        return (
            f"{source}: task {task.name} has the classes {', '.join(theirs.get('classes', []))}; this run's are "
            f"{', '.join(task.classes)} (same names, same order)"
        )
    return None


def check_teachers(config, tasks) -> None:
    """ConfigError, before any data is read, for a teacher that cannot teach this run: a folder that
    is not a finished run, a teacher with none of the run's tasks, a task whose classes, level or clip
    length differ, a teacher-outputs folder without its teacher.json or with other classes."""
    tc = config.training
    by_name = {t.name: t for t in tasks}
    for teacher in tc.teachers:
        run = _open_teacher(teacher)
        shared = [t for t in run.tasks if t.name in by_name]
        if not shared:
            raise ConfigError(
                f"--teacher {teacher}: its tasks ({', '.join(t.name for t in run.tasks)}) include none of this "
                f"run's ({', '.join(by_name)})"
            )
        for theirs in shared:
            ours = by_name[theirs.name]
            problem = _mismatch(f"--teacher {teacher}", ours, _describe(theirs))
            if problem is None and abs(theirs.clip_seconds - ours.clip_seconds) > 1e-6:
                problem = (
                    f"--teacher {teacher}: task {ours.name} takes {theirs.clip_seconds:g} s clips there, "
                    f"{ours.clip_seconds:g} s here"
                )
            if problem:
                raise ConfigError(problem)
    if tc.teacher_outputs:
        folder = Path(tc.teacher_outputs)
        described = _read_description(folder)
        covered = [name for name in described.get("tasks", {}) if name in by_name]
        if not covered:
            raise ConfigError(f"--teacher-outputs {folder}: {DESCRIPTION} names none of this run's tasks")
        for name in covered:
            problem = _mismatch(f"--teacher-outputs {folder / DESCRIPTION}", by_name[name], described["tasks"][name])
            if problem:
                raise ConfigError(problem)


def _open_teacher(path: str):
    try:
        return open_run(path)  # a finished run: its configuration and its network
    except (ConfigError, DataError) as exc:
        raise ConfigError(f"--teacher {path}: {exc}") from None


def _read_description(folder: Path) -> dict:
    path = folder / DESCRIPTION
    if not path.is_file():
        raise ConfigError(
            f"--teacher-outputs {folder}: no {DESCRIPTION} (the tasks, levels and classes of the outputs; "
            "see keras_mtl.training.distill)"
        )
    try:
        described = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(described, dict) or not isinstance(described.get("tasks"), dict):
        raise ConfigError(f'{path}: expected {{"tasks": {{"<task>": {{"level": ..., "classes": [...]}}}}}}')
    return described


def training_splits(data, task_name: str) -> list[TaskSplit]:
    """Every training split of a task: its own, then the semi-supervised ones (weak, unlabelled, strong real)."""
    return [data.train[task_name], *(s for s in data.semi.get(task_name, ()) if s is not None)]


def attach_teacher_outputs(config, tasks, data, out: Path) -> dict:
    """Sets ``TaskSplit.teacher`` on every training split of the tasks a teacher covers. ``--teacher``
    runs are scored here and written to ``out/teacher_outputs`` (kept there: ``--resume`` reads them
    back); ``--teacher-outputs`` folders are read. Returns {task: {"weight", "temperature", "source"}}
    for metrics.json. DataError naming the file for a missing or misshapen clip output."""
    tc = config.training
    folder = Path(tc.teacher_outputs) if tc.teacher_outputs else out / "teacher_outputs"
    if tc.teachers and not (folder / DESCRIPTION).is_file():
        _write_teacher_outputs(tc.teachers, tasks, data, config, folder)
    if not (tc.teachers or tc.teacher_outputs):
        return {}
    described = _read_description(folder)
    facts = {}
    for task in tasks:
        if task.name not in described["tasks"]:
            continue
        for split in training_splits(data, task.name):
            split.teacher = [_load_clip(folder, task, item.key, split) for item in split.items]
        weight, temperature = tc.distillation_for(task.name)
        facts[task.name] = {
            "weight": weight,
            "temperature": temperature,
            "source": list(tc.teachers) or str(folder),
        }
        log.info("%s: distilled from %s (weight %g, temperature %g)", task.display, facts[task.name]["source"],
                 weight, temperature)  # fmt: skip
    return facts


def _load_clip(folder: Path, task, key: str, split: TaskSplit) -> np.ndarray:
    path = clip_file(folder, task.name, key)
    try:
        values = np.asarray(np.load(path), np.float32)
    except FileNotFoundError:
        raise DataError(f"{path}: no teacher output for the training clip {key}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable teacher output ({exc})") from None
    classes = task.n_classes
    if task.level == "clip":
        if values.shape != (classes,):
            raise DataError(f"{path}: teacher output of shape {values.shape}; task {task.name} needs ({classes},)")
        return values
    if values.ndim != 2 or values.shape[1] != classes or values.shape[0] < 1:
        raise DataError(f"{path}: teacher output of shape {values.shape}; task {task.name} needs (frames, {classes})")
    return resample_frames(values, split.output_frames)


def resample_frames(values: np.ndarray, frames: int) -> np.ndarray:
    """(F, C) outputs of frames evenly over a clip -> (frames, C), by linear interpolation between the
    frames' centres (the same clip, another frame rate)."""
    if values.shape[0] == frames:
        return values.astype(np.float32)
    source = (np.arange(values.shape[0]) + 0.5) / values.shape[0]
    target = (np.arange(frames) + 0.5) / frames
    return np.stack([np.interp(target, source, values[:, c]) for c in range(values.shape[1])], axis=1).astype(
        np.float32
    )


def _write_teacher_outputs(teachers, tasks, data, config, folder: Path) -> None:
    """Scores every training clip of the covered tasks with every teacher (its own front end) and
    writes their mean to ``folder`` in the teacher-outputs format (temporary folder, then rename)."""
    by_name = {t.name: t for t in tasks}
    sums: dict[str, dict[str, np.ndarray]] = {}
    counts: dict[str, int] = {}
    for teacher in teachers:
        run = _open_teacher(teacher)
        network = run.network()
        factor, ceil = time_resolution(run.config)
        extractor = FeatureExtractor(run.config.frontend, config.cache_dir or default_cache_dir())
        for theirs in run.tasks:
            if theirs.name not in by_name:
                continue
            submodel = task_submodel(network, theirs.name)
            path = tf.function(lambda x, model=submodel: model(x, training=False))
            outputs = sums.setdefault(theirs.name, {})
            counts[theirs.name] = counts.get(theirs.name, 0) + 1
            for split in training_splits(data, theirs.name):
                prepared = extractor.prepare(theirs, f"{split.split} (teacher)", split.items, factor, ceil)
                for start in tqdm(range(0, len(prepared), 32), desc=f"teacher {theirs.name}", leave=False,
                                  disable=None):  # fmt: skip
                    indices = range(start, min(start + 32, len(prepared)))
                    batch = np.stack([prepared.load_features(i) for i in indices]).astype(np.float32)
                    scores = np.asarray(path(tf.constant(batch)))
                    for i, values in zip(indices, scores):
                        if theirs.level == "frame":
                            values = resample_frames(values, split.output_frames)
                        key = prepared.items[i].key
                        outputs[key] = outputs[key] + values if key in outputs else values.astype(np.float64)
    temporary = folder.with_name(folder.name + ".partial")
    shutil.rmtree(temporary, ignore_errors=True)
    for name, outputs in sums.items():
        for key, total in outputs.items():
            target = clip_file(temporary, name, key)
            target.parent.mkdir(parents=True, exist_ok=True)
            np.save(target, (total / counts[name]).astype(np.float32))
    fileio.write_json(
        temporary / DESCRIPTION,
        {"tasks": {name: _describe(by_name[name]) for name in sums}, "teachers": [str(t) for t in teachers]},
    )
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(temporary, folder)
    log.info("teacher outputs of %d task(s) written to %s", len(sums), folder)
