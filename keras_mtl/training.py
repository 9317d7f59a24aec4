"""One training run: data -> features -> model -> strategy -> DCASE metrics -> run folder.

Run folder (``runs/<time>-<tasks>-<strategy>/``):
    config.yaml          the full resolved configuration (reusable with --config)
    model_summary.txt    Keras summary
    profile.txt          params and MACs per 1 s of audio, per layer
    model.keras          the trained functional network (tf_keras format)
    history.csv          per-epoch training and validation losses/metrics
    batch_loss.csv       the training losses after every batch (running mean within each epoch)
    metrics.json         per task: DCASE metrics, params, MACs / 1 s; plus run facts
    training_curves.png  loss and headline metric per epoch
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import yaml

from keras_mtl import architectures, fileio, profiling, reporting, weighting
from keras_mtl.backend import keras, tf
from keras_mtl.config import RunConfig
from keras_mtl.data import corpora, speech_synth, synthetic
from keras_mtl.data.pipeline import (FeatureExtractor, TaskSplit, feature_statistics, make_dataset,
                                     make_semi_supervised_dataset)
from keras_mtl.errors import ConfigError, DataError
from keras_mtl.strategies import SUMMING, get_strategy, make_optimizer
from keras_mtl.tasks import resolve_tasks

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent


def _in_checkout() -> bool:
    return (REPO_ROOT / "datasets").is_dir() and (REPO_ROOT / "keras_mtl").is_dir()


def default_data_dir() -> Path:
    """Where the built-in synthetic data is generated."""
    if os.environ.get("KERAS_MTL_DATA_DIR"):
        return Path(os.environ["KERAS_MTL_DATA_DIR"])
    return REPO_ROOT / "datasets" / "synthetic" if _in_checkout() else Path.home() / ".cache" / "keras_mtl" / "synthetic"


def default_cache_dir() -> Path:
    """Where log-mel features are cached."""
    if os.environ.get("KERAS_MTL_CACHE_DIR"):
        return Path(os.environ["KERAS_MTL_CACHE_DIR"])
    return REPO_ROOT / "datasets" / ".cache" / "features" if _in_checkout() else Path.home() / ".cache" / "keras_mtl" / "features"


def make_distribution(config: RunConfig):
    """The tf.distribute strategy of ``config.distribute`` (None: TensorFlow's default). Must run
    before any other TensorFlow op: collective ops are configured at start-up."""
    if config.distribute is None:
        return None
    if config.distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if not os.environ.get("TF_CONFIG"):
        raise ConfigError("--distribute multi-worker reads the cluster from TF_CONFIG, which is not set "
                          '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}})')
    if not config.output_dir:
        raise ConfigError("--distribute multi-worker needs --output-dir (the same on every worker)")
    return tf.distribute.MultiWorkerMirroredStrategy()


def worker_role() -> tuple[bool, str]:
    """(whether this process is the chief, its task name) from TF_CONFIG; (True, "") without one."""
    cluster_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task, cluster = cluster_config.get("task") or {}, cluster_config.get("cluster") or {}
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    return chief, f"{kind}-{index}"


def default_output_dir(config: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = REPO_ROOT / "runs" if _in_checkout() else Path.cwd() / "runs"
    return base / f"{stamp}-{'+'.join(config.tasks)}-{config.strategy}"


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
            raise ConfigError(f"training.mean_teacher is on, but task {task.name} has no weakly labelled or "
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
            log.info("%s/%s: %d clips after leaving out those listed in %s", task.name, task.train_split,
                     len(train_items), excluded[task.name])
        items[task.name] = (train_items, corpora.read_split(task, roots[task.name], task.test_split))
        if task.name in semi_splits:
            semi_items[task.name] = tuple(
                (split, corpora.read_split(task, roots[task.name], split)) if split else None
                for split in semi_splits[task.name])
    for task in tasks:
        _check_disjoint(task, *items[task.name])
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


def _check_disjoint(task, train_items, test_items) -> None:
    """A clip must not be both trained on and tested on."""
    train_paths = {Path(item.path).resolve() for item in train_items}
    shared = sorted(str(item.path) for item in test_items if Path(item.path).resolve() in train_paths)
    if shared:
        more = f" (and {len(shared) - 1} more)" if len(shared) > 1 else ""
        raise DataError(f"{shared[0]}{more}: in both the {task.train_split} and the {task.test_split} split of task "
                        f"{task.name}; a clip cannot be trained and tested on")


def architecture_options(config: RunConfig) -> dict:
    """The registry options of the configured network: the model section for ``mtl``."""
    if config.architecture == "mtl":
        return dataclasses.asdict(config.model)
    return dict(config.architecture_options or {})


def time_resolution(config: RunConfig) -> tuple[int, bool]:
    """(input frames per output frame, whether the count rounds up) of the configured network."""
    architecture = architectures.get_architecture(config.architecture)
    return architecture.time_pool_factor(architecture_options(config)), architecture.ceil_frames


def build_network(config: RunConfig, tasks, feature_mean=None, feature_var=None, weak_output: bool = False) -> keras.Model:
    """The configured network from the registry; input statistics go to architectures that use them;
    ``weak_output`` adds the clip-level outputs of frame tasks that the mean teacher trains."""
    options = architecture_options(config)
    if architectures.get_architecture(config.architecture).input_statistics:
        options.update(feature_mean=feature_mean, feature_var=feature_var)
    if weak_output:
        options["weak_output"] = True
    return architectures.build(config.architecture, tasks, **options)


class EpochValidation(keras.callbacks.Callback):
    """After each epoch: every task's loss and Keras metrics on its held-out split (``val_*``)."""

    def __init__(self, strategy, datasets: dict):
        super().__init__()
        self.strategy = strategy
        self.datasets = datasets
        # made here, outside any tf.distribute scope (fit runs callbacks inside it): plain variables
        self.task_metrics = {task.name: task.keras_metrics() for task in strategy.tasks}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        for task in self.strategy.tasks:
            path = self.strategy.paths[task.name]
            metrics = self.task_metrics[task.name]
            for metric in metrics:
                metric.reset_state()
            losses, weights = [], []
            for features, targets in self.datasets[task.name]:
                predictions = path(features, training=False)
                losses.append(float(task.loss(targets, predictions)))
                weights.append(int(features.shape[0]))
                for metric in metrics:
                    metric.update_state(targets, predictions)
            logs[f"val_{task.name}_loss"] = float(np.average(losses, weights=weights))
            for metric in metrics:
                logs[f"val_{metric.name}"] = float(metric.result())


class HistoryWriter(keras.callbacks.Callback):
    """Writes history.csv after every epoch (atomically), so a crashed run keeps its curve."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.rows: list[dict] = []
        self.started = time.monotonic()
        self.extra: dict = {}  # constant columns, e.g. the training phase

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "seconds": round(time.monotonic() - self.started, 2), **self.extra}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self.rows.append(row)
        write_rows(self.path, self.rows)


def write_rows(path: Path, rows: list[dict]) -> None:
    """A CSV of dict rows (columns: every key, in order of appearance), written atomically."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    fileio.write_text(path, buffer.getvalue())


class BatchLossWriter(keras.callbacks.Callback):
    """Writes batch_loss.csv at every epoch end: per training batch, the step and the losses Keras
    reports after it (running means over the epoch so far, total and per task); the learning curve
    at batch resolution (keras_mtl.analysis)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path, self.rows, self.step = path, [], 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self.rows.append({"step": self.step, **{k: float(v) for k, v in (logs or {}).items() if k.endswith("loss")}})

    def on_epoch_end(self, epoch, logs=None):
        write_rows(self.path, self.rows)


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: ``checkpoint/epoch-<n>/`` with the network, the teacher, the optimizer
    and the loss weights (tf.train.Checkpoint) and ``resume.json`` (epochs done, phase, weighting
    state, history rows); then ``checkpoint/latest`` names it (atomic rename) and older ones go.
    A run killed at any moment leaves the last complete checkpoint."""

    def __init__(self, folder: Path, strategy, weighting_callback, history_writer):
        super().__init__()
        self.folder = folder
        self.strategy = strategy
        self.weighting_callback = weighting_callback
        self.history_writer = history_writer
        self.phase = 0

    def on_epoch_end(self, epoch, logs=None):
        name = f"epoch-{epoch + 1}"
        target = self.folder / name
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        checkpoint_of(self.strategy).write(str(tmp / "state"))
        fileio.write_json(tmp / "resume.json", {
            "epochs_done": epoch + 1, "phase": self.phase, "weighting": self.weighting_callback.state(),
            "history": self.history_writer.rows})
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        fileio.write_text(self.folder / "latest", name + "\n")
        for old in self.folder.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)


def checkpoint_of(strategy, optimizer: bool = True) -> tf.train.Checkpoint:
    parts = {"network": strategy.network, "loss_weights": list(strategy.loss_weights.values())}
    if optimizer:
        parts["optimizer"] = strategy.optimizer
    if strategy.teacher is not None:
        parts["teacher"] = strategy.teacher
    return tf.train.Checkpoint(**parts)


def latest_checkpoint(run_dir: Path) -> tuple[Path, dict] | None:
    """(checkpoint folder, its resume.json) of a run folder, or None."""
    pointer = run_dir / "checkpoint" / "latest"
    if not pointer.is_file():
        return None
    folder = run_dir / "checkpoint" / pointer.read_text().strip()
    try:
        return folder, json.loads((folder / "resume.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{folder}: damaged checkpoint (resume.json unreadable)") from None


def strategy_class(config: RunConfig):
    """The strategy class a run trains with: the architecture's own (mtl-vae) or --strategy."""
    own = architectures.get_architecture(config.architecture).strategy
    if own == "mtl-vae":
        from keras_mtl.vae import MTLVAE

        return MTLVAE
    return get_strategy(config.strategy)


def check_strategy_options(config: RunConfig) -> None:
    """Errors for strategy options that do not fit together, before any data is read."""
    own = architectures.get_architecture(config.architecture).strategy
    if own is not None and (config.strategy != "soft" or config.weighting != "fixed"):
        raise ConfigError(f"architecture {config.architecture} trains with its own strategy: "
                          f"drop --strategy {config.strategy} / --weighting {config.weighting}")
    weighting.check_weighting(config.weighting, config.strategy)
    if config.strategy == "freeze":
        if not config.order:
            raise ConfigError(f"--strategy freeze needs --order, e.g. --order {','.join(config.tasks)}")
        if sorted(config.order) != sorted(config.tasks):
            raise ConfigError(f"--order {','.join(config.order)} must name each task of the set "
                              f"({','.join(config.tasks)}) once")
    elif config.order:
        raise ConfigError("--order is for --strategy freeze")
    if config.strategy in ("hard", "cross-hard", "cross-soft", "freeze") and len(config.tasks) < 2:
        raise ConfigError(f"--strategy {config.strategy} needs at least two tasks")
    if (config.alpha is not None or config.loss_weights) and config.weighting != "fixed":
        raise ConfigError(f"--alpha (loss_weights) fixes the task weights; --weighting {config.weighting} changes them")
    if (config.alpha is not None or config.loss_weights) and config.strategy not in SUMMING:
        raise ConfigError(f"loss weights (--alpha) apply to a sum of task losses: strategy {config.strategy} "
                          f"updates one task per step (use {' or '.join(SUMMING)})")


def training_batches(task, data: PreparedData, tc, augment, seed: int) -> tf.data.Dataset:
    """A task's endless training batches: semi-supervised ones for mean-teacher tasks."""
    if task.name in data.semi:
        weak, unlabeled, strong_real = data.semi[task.name]
        return make_semi_supervised_dataset(data.train[task.name], weak, unlabeled, tc.semi_supervised_batches(task.name),
                                            augment, seed, strong_real=strong_real)
    return make_dataset(data.train[task.name], tc.batch_for(task.name), training=True, augment=augment, seed=seed)


def predict_split(path_model, split: TaskSplit, batch_size: int) -> list[np.ndarray]:
    outputs = []
    for features, _ in make_dataset(split, batch_size, training=False):
        outputs.extend(np.asarray(path_model(features, training=False)))
    return outputs


def evaluate_task(path_model, task, data: PreparedData, tc) -> dict:
    """The task's DCASE-style metrics of ``path_model`` (the task's path) on its test split."""
    split = data.test[task.name]
    predictions = predict_split(path_model, split, tc.batch_for(task.name))
    return task.evaluate(predictions, split.items, split.frame_seconds)


def fit_network(network: keras.Model, tasks, data: PreparedData, config: RunConfig, epochs: int | None = None,
                strategy_cls=None, callbacks=(), **strategy_options):
    """Trains ``network`` on ``tasks`` (SoftMTL unless ``strategy_cls``) with a fresh optimizer, the
    run's batches, learning-rate schedule and loss weights; returns the fitted strategy. For
    procedures that train a network several times (compression)."""
    from keras_mtl.strategies import SoftMTL

    tc = config.training
    epochs = tc.epochs if epochs is None else int(epochs)
    names = [t.name for t in tasks]
    steps = tc.steps_per_epoch or max(math.ceil(len(data.train[n]) / tc.batch_for(n)) for n in names)
    weights = config.task_loss_weights() if list(config.tasks) == names else None
    semi = [n for n in names if n in data.semi]
    options = dict(loss_weights=weights, mean_teacher_tasks=semi, consistency_weight=tc.consistency_weight,
                   rampup_steps=int(round(tc.rampup_fraction * steps * epochs)), cross_weight=tc.cross_weight,
                   max_ema_decay=tc.ema_decay)
    options.update(strategy_options)
    strategy = (strategy_cls or SoftMTL)(network, tasks, **options)
    strategy.compile(optimizer=make_optimizer(tc.learning_rate, steps * epochs, tc.weight_decay, tc.warmup_fraction))
    augment = config.augment if tc.augment else None
    batches = tf.data.Dataset.zip({t.name: training_batches(t, data, tc, augment, config.seed) for t in tasks})
    strategy.fit(batches, epochs=epochs, steps_per_epoch=steps, callbacks=list(callbacks),
                 verbose=1 if _interactive() else 2)
    return strategy


def train(config: RunConfig, dry_run: bool = False, resume: bool = False) -> dict:
    """Run one experiment; returns the metrics dict (also written to the run folder).
    ``resume``: continue the run in ``config.output_dir`` from its last epoch checkpoint."""
    distribution = make_distribution(config)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    tasks = resolve_tasks(list(config.tasks), config.custom_tasks)
    strategy_cls = strategy_class(config)
    check_strategy_options(config)
    loss_weights = config.task_loss_weights()
    started = time.monotonic()

    if dry_run:
        network = build_network(config, tasks)
        return _describe(network, tasks, config, output_dir=None)

    data = prepare_data(config, tasks)
    prep_seconds = time.monotonic() - started
    mean, var = feature_statistics(list(data.train.values()))
    def scope():  # a fresh context each time: a strategy scope cannot be entered twice
        return distribution.scope() if distribution is not None else contextlib.nullcontext()

    with scope():
        network = build_network(config, tasks, feature_mean=mean, feature_var=var, weak_output=bool(data.semi))

    tc = config.training
    steps = tc.steps_per_epoch or max(math.ceil(len(data.train[t.name]) / tc.batch_for(t.name)) for t in tasks)
    options = dict(loss_weights=loss_weights, mean_teacher_tasks=list(data.semi), consistency_weight=tc.consistency_weight,
                   rampup_steps=int(round(tc.rampup_fraction * steps * tc.epochs)), cross_weight=tc.cross_weight,
                   max_ema_decay=tc.ema_decay)
    if config.strategy == "freeze":
        options["order"] = config.order
    if strategy_cls.__name__ == "MTLVAE":
        options = dict(loss_weights=loss_weights, kl_weight=tc.kl_weight,
                       kl_warmup_steps=int(round(tc.kl_warmup_fraction * steps * tc.epochs)))
    with scope():
        strategy = strategy_cls(network, tasks, **options)
    augment = config.augment if tc.augment else None
    train_ds = tf.data.Dataset.zip({t.name: training_batches(t, data, tc, augment, config.seed) for t in tasks})
    if distribution is not None:  # each worker takes every N-th batch: batch sizes are per worker
        shard = tf.data.Options()
        shard.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds = train_ds.with_options(shard)
    val_ds = {t.name: make_dataset(data.test[t.name], tc.batch_for(t.name), training=False) for t in tasks}

    out = Path(config.output_dir) if config.output_dir else default_output_dir(config)
    if config.distribute == "multi-worker":
        chief, role = worker_role()
        if not chief:
            out = out / role  # workers other than the chief keep their files apart
    out.mkdir(parents=True, exist_ok=True)
    info = _describe(network, tasks, config, output_dir=out)
    log.info("run folder: %s", out)
    strategy_name = architectures.get_architecture(config.architecture).strategy or config.strategy
    log.info("training %s on %s: %d epochs x %d steps%s", strategy_name, "+".join(config.tasks), tc.epochs, steps,
             f"; semi-supervised batches for {', '.join(data.semi)}" if data.semi else "")

    history_writer = HistoryWriter(out / "history.csv")
    weighting_callback = weighting.make_weighting(config.weighting, strategy)
    checkpointer = EpochCheckpoint(out / "checkpoint", strategy, weighting_callback, history_writer)
    callbacks = [EpochValidation(strategy, val_ds), weighting_callback, history_writer, checkpointer]
    if not resume:  # a resumed run's batch log would have a hole
        callbacks.insert(0, BatchLossWriter(out / "batch_loss.csv"))
    saved = latest_checkpoint(out) if resume else None
    if resume and saved is None:
        log.warning("%s has no checkpoint yet: training from the start", out)
    fit_started = time.monotonic()
    phases = strategy.phases()
    for index, phase in enumerate(phases):
        first_epoch = index * tc.epochs
        if saved is not None and saved[1]["epochs_done"] >= (index + 1) * tc.epochs:
            continue  # a finished phase
        strategy.begin_phase(index)
        with scope():
            strategy.compile(optimizer=make_optimizer(tc.learning_rate, steps * tc.epochs, tc.weight_decay,
                                                      tc.warmup_fraction))
        checkpointer.phase = index
        if saved is not None:
            folder, state = saved
            strategy.optimizer.build(strategy.optimized_variables())
            # at a phase boundary (FreezeMTL) the new phase's optimizer starts fresh
            checkpoint_of(strategy, optimizer=state["epochs_done"] > first_epoch).read(str(folder / "state")).expect_partial()
            weighting_callback.restore(state["weighting"])
            history_writer.rows = list(state["history"])
            first_epoch = state["epochs_done"]
            log.info("resumed %s after epoch %d", out, first_epoch)
            saved = None
        if phase is not None:
            log.info("phase %d/%d: training %s", index + 1, len(phases), phase)
            history_writer.extra = {"phase": phase}
        # a resumed phase goes on where the data order left off: its finished epochs' batches are skipped
        done_in_phase = (first_epoch - index * tc.epochs) * steps
        strategy.fit(
            train_ds.skip(done_in_phase) if done_in_phase else train_ds,
            initial_epoch=first_epoch,
            epochs=(index + 1) * tc.epochs,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=1 if _interactive() else 2,
        )
    fit_seconds = time.monotonic() - fit_started

    with fileio.atomic_path(out / "model.keras") as tmp:
        network.save(tmp)

    results = {}
    for task in tasks:
        split = data.test[task.name]
        task_metrics = evaluate_task(strategy.paths[task.name], task, data, tc)
        results[task.name] = {
            "split": split.split,
            "metrics": task_metrics,
            "headline": {"name": task.headline, "value": task_metrics[task.headline]},
            "params": info["profile"]["task_paths"][task.name]["params"],
            "macs_per_second": info["profile"]["task_paths"][task.name]["macs_per_second"],
            "train_clips": len(data.train[task.name]),
        }
    metrics = {
        "tasks": results,
        "model": info["profile"]["total"],
        "shared": info["profile"]["parts"]["shared"],
        "strategy": strategy_name,
        "weighting": config.weighting,
        "loss_weights": {name: float(w.numpy()) for name, w in strategy.loss_weights.items()},
        "mean_teacher": sorted(data.semi),
        "phases": [p for p in phases if p is not None],
        "epochs": tc.epochs * len(phases),
        "steps_per_epoch": steps,
        "seconds": {"data": round(prep_seconds, 1), "training": round(fit_seconds, 1),
                    "total": round(time.monotonic() - started, 1)},
        "data_roots": {k: str(v) for k, v in data.roots.items()},
        "output_dir": str(out),
    }
    fileio.write_json(out / "metrics.json", metrics)
    reporting.plot_history(history_writer.rows, tasks, out / "training_curves.png")
    return metrics


def _describe(network, tasks, config: RunConfig, output_dir: Path | None) -> dict:
    """Summary and profile; written to the run folder when there is one."""
    lines = []
    network.summary(line_length=110, print_fn=lambda line, *args, **kwargs: lines.append(line))
    summary = "\n".join(lines)
    layers = profiling.profile(network, config.frontend)
    table = profiling.format_table(layers)
    prof = profiling.summarize(layers, [t.name for t in tasks])
    if output_dir is not None:
        fileio.write_text(output_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        fileio.write_text(output_dir / "model_summary.txt", summary + "\n")
        fileio.write_text(output_dir / "profile.txt", table + "\n")
    return {"summary": summary, "profile_table": table, "profile": prof}


def _interactive() -> bool:
    import sys

    return sys.stdout.isatty()
