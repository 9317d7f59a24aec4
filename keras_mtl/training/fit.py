"""TODO docstring."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import numpy as np

from keras_mtl.models import architectures
from keras_mtl.core import fileio, reporting
from keras_mtl.training import weighting
from keras_mtl.core.backend import keras, tf
from keras_mtl.runs.config import RunConfig
from keras_mtl.data.pipeline import TaskSplit, feature_statistics, make_dataset, make_semi_supervised_dataset
from keras_mtl.core.errors import ConfigError
from keras_mtl.training.strategies import SUMMING, get_strategy, make_optimizer
from keras_mtl.tasks.registry import resolve_tasks
from keras_mtl.training.callbacks import BatchLossWriter, EpochCheckpoint, EpochValidation, HistoryWriter, checkpoint_of
from keras_mtl.runs.inputs import PreparedData, prepare_data
from keras_mtl.runs.network import build_network
from keras_mtl.runs.folder import default_output_dir, describe_run, latest_checkpoint
from keras_mtl.training.distribution import make_distribution, worker_role


log = logging.getLogger(__name__)


def strategy_class(config: RunConfig):
    """The strategy class a run trains with: the architecture's own (mtl-vae) or --strategy."""
    own = architectures.get_architecture(config.architecture).strategy
    if own == "mtl-vae":
        from keras_mtl.training.vae import MTLVAE

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
    from keras_mtl.training.strategies import SoftMTL

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
                 verbose=1 if interactive() else 2)
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
        return describe_run(network, tasks, config, output_dir=None)

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
    info = describe_run(network, tasks, config, output_dir=out)
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
            verbose=1 if interactive() else 2,
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


def interactive() -> bool:
    import sys

    return sys.stdout.isatty()
