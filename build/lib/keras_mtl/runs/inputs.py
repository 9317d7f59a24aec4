"""A run's inputs: the corpus folder of each task (generating the synthetic sets when none is given),
its splits read and checked, and their features cached; every input error surfaces here, before training."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path


from keras_mtl.models import architectures
from keras_mtl.runs.config import RunConfig
from keras_mtl.data.audio import audio_seconds
from keras_mtl.data.items import check_event_inside
from keras_mtl.data.readers import corpora
from keras_mtl.data.synth import speech_synth, synthetic
from keras_mtl.data.pipeline import FeatureExtractor, TaskSplit
from keras_mtl.core.errors import ConfigError, DataError
from keras_mtl.core.paths import default_cache_dir, default_data_dir
from keras_mtl.runs.network import time_resolution


log = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedData:
    train: dict[str, TaskSplit]
    test: dict[str, TaskSplit]
    roots: dict[str, Path]
    # semi-supervised frame tasks: (weakly labelled, unlabelled, strong real) training splits, any may be None
    semi: dict[str, tuple[TaskSplit | None, ...]] = dataclasses.field(default_factory=dict)


def task_roots(config: RunConfig, tasks) -> dict[str, Path]:
    """The corpus folder of each task, generating the synthetic set when no data root is given."""
    roots = {task.name: corpora.corpus_root(task, None) for task in tasks if not corpora.needs_data_root(task)}
    rest = [task for task in tasks if corpora.needs_data_root(task)]
    if not rest:
        return roots
    if config.data_root is None:
        bases = {}
        for task in rest:
            kind = corpora.CORPORA[task.corpus].synthetic
            if kind not in bases:
                bases[kind] = (synthetic.ensure_synthetic(default_data_dir(), config.synthetic) if kind == "sound"
                               else speech_synth.ensure_speech_synthetic(default_data_dir(), config.speech_synthetic))
            roots[task.name] = corpora.corpus_root(task, bases[kind])
    elif isinstance(config.data_root, dict):
        unknown = set(config.data_root) - {t.name for t in rest}
        if unknown:
            raise ConfigError(f"--data-root names task(s) not in the task set: {', '.join(sorted(unknown))}")
        missing = [t.name for t in rest if t.name not in config.data_root]
        if missing:
            raise ConfigError(f"--data-root gives no folder for task(s): {', '.join(missing)}")
        roots.update({task.name: corpora.corpus_root(task, config.data_root[task.name]) for task in rest})
    else:
        roots.update({task.name: corpora.corpus_root(task, config.data_root) for task in rest})
    return {task.name: roots[task.name] for task in tasks}


def mean_teacher_splits(config: RunConfig, tasks, roots: dict[str, Path]) -> dict[str, tuple]:
    """{frame task: (weak split, unlabeled split, strong real split)} of the tasks trained on
    semi-supervised batches (mean teacher, MTL-VAE); a split the data lack is None."""
    mode = config.training.mean_teacher
    if mode == "off":
        return {}
    found = {}
    for task in tasks:
        if task.level != "frame":
            continue
        splits = tuple(split if split and corpora.has_split(task, roots[task.name], split) else None
                       for split in (task.weak_split, task.unlabeled_split, task.strong_real_split))
        if any(splits):
            found[task.name] = splits
        elif mode == "on":
            raise ConfigError(f"training.mean_teacher is on, but task {task.display} has no weakly labelled or "
                              f"unlabelled clips in {roots[task.name]}")
    if mode == "on" and not any(task.level == "frame" for task in tasks):
        raise ConfigError("training.mean_teacher is on, but no task of the set is frame-level")
    if found and not architectures.get_architecture(config.architecture).weak_output:
        if mode == "on":
            raise ConfigError(f"architecture {config.architecture} has no weak output for the mean teacher")
        log.info("architecture %s has no weak output: training %s on strong labels only", config.architecture,
                 ", ".join(found))
        return {}
    return found


def prepare_data(config: RunConfig, tasks) -> PreparedData:
    """Read every split and make sure its features are cached; all input errors surface here."""
    roots = task_roots(config, tasks)
    semi_splits = mean_teacher_splits(config, tasks, roots)
    items, semi_items = {}, {}
    excluded = dict(config.exclude_train or {})
    unknown = set(excluded) - {task.name for task in tasks}
    if unknown:
        raise ConfigError(f"exclude_train names task(s) not in the task set: {', '.join(sorted(unknown))}")
    for task in tasks:
        train_items = corpora.read_split(task, roots[task.name], task.train_split)
        if task.name in excluded:
            train_items = exclude_items(train_items, roots[task.name], Path(excluded[task.name]))
            log.info("%s/%s: %d clips after leaving out those listed in %s", task.display, task.train_split,
                     len(train_items), excluded[task.name])
        items[task.name] = (train_items, corpora.read_split(task, roots[task.name], task.test_split))
        if task.name in semi_splits:
            semi_items[task.name] = tuple(
                (split, corpora.read_split(task, roots[task.name], split)) if split else None
                for split in semi_splits[task.name])
    for task in tasks:
        _check_disjoint(task, *items[task.name])
        check_labels(task, *items[task.name])
    extractor = FeatureExtractor(config.frontend, config.cache_dir or default_cache_dir())
    factor, ceil = time_resolution(config)
    train, test = {}, {}
    for task in tasks:
        train_items, test_items = items[task.name]
        train[task.name] = extractor.prepare(task, task.train_split, train_items, factor, ceil)
        test[task.name] = extractor.prepare(task, task.test_split, test_items, factor, ceil)
    semi = {}
    for task in tasks:
        if task.name in semi_items:
            semi[task.name] = tuple(extractor.prepare(task, pair[0], pair[1], factor, ceil) if pair else None
                                    for pair in semi_items[task.name])
    return PreparedData(train, test, roots, semi)


def exclude_items(items: list, root: Path, listing: Path) -> list:
    """``items`` without the clips named in ``listing`` (paths relative to ``root``, one a line; blank
    lines and # comments skipped); a name that is no item of the split is an error."""
    try:
        lines = listing.read_text().splitlines()
    except OSError as error:
        raise DataError(f"{listing}: cannot read the list of clips to leave out ({error.strerror})") from None
    base = Path(root).resolve()

    def name_of(item) -> str:
        path = Path(item.path).resolve()
        return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(item.path)

    present = {name_of(item) for item in items}
    names = set()
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name not in present:
            raise DataError(f"{listing}, line {number}: {name!r} is not a clip of this split (paths are relative "
                            f"to {root})")
        names.add(name)
    kept = [item for item in items if name_of(item) not in names]
    if not kept:
        raise DataError(f"{listing}: leaves no clip in the split")
    return kept


def _item_classes(task, item) -> set:
    if task.level == "frame":
        return {event.label for event in item.events or ()}
    return {item.label} if item.label is not None else set()


def check_labels(task, train_items, test_items) -> None:
    """Labels against the recordings and the splits, for every reader: DataError for a strong event
    outside its recording (``check_event_inside``); a warning naming each class that has test
    clips but no training clip (the network cannot learn it, yet it is scored)."""
    if task.level == "frame":
        for item in (*train_items, *test_items):
            if item.events:
                duration = item.duration if item.duration else audio_seconds(item.path)
                for event in item.events:
                    check_event_inside(event, duration, str(item.path), Path(item.path).name)
    trained = set().union(*(_item_classes(task, item) for item in train_items)) if train_items else set()
    tested: dict[str, int] = {}
    for item in test_items:
        for label in _item_classes(task, item):
            tested[label] = tested.get(label, 0) + 1
    for label in sorted(set(tested) - trained):
        log.warning(
            "%s: class %r has %d %s clip(s) and no %s clip: its output cannot be trained, yet it is scored",
            task.display, label, tested[label], task.test_split, task.train_split,
        )


def _check_disjoint(task, train_items, test_items) -> None:
    """A clip must not be both trained on and tested on."""
    train_paths = {Path(item.path).resolve() for item in train_items}
    shared = sorted(str(item.path) for item in test_items if Path(item.path).resolve() in train_paths)
    if shared:
        more = f" (and {len(shared) - 1} more)" if len(shared) > 1 else ""
        raise DataError(f"{shared[0]}{more}: in both the {task.train_split} and the {task.test_split} split of task "
                        f"{task.name}; a clip cannot be trained and tested on")
