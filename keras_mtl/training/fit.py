"""One training run: data -> features -> network -> strategy -> DCASE metrics -> run folder
(keras_mtl.runs.folder), with per-epoch checkpoints for --resume."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path

from keras_mtl.core import reporting
from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError, EvaluationError
from keras_mtl.data.pipeline import feature_statistics, make_dataset, make_semi_supervised_dataset
from keras_mtl.models import architectures, joint, normalization
from keras_mtl.runs.config import RunConfig
from keras_mtl.runs.folder import (
    claim_run_folder,
    default_output_dir,
    describe_run,
    latest_checkpoint,
    save_network,
    write_metrics,
    write_training_facts,
)
from keras_mtl.runs.inputs import PreparedData, prepare_data
from keras_mtl.runs.network import build_network, check_deployable
from keras_mtl.tasks.registry import resolve_tasks
from keras_mtl.training import distill, weighting
from keras_mtl.training.callbacks import (
    BatchLossWriter,
    EpochCheckpoint,
    EpochValidation,
    HistoryWriter,
    WeightAverage,
    checkpoint_of,
)
from keras_mtl.training.distribution import make_distribution, worker_role
from keras_mtl.training.evaluate import evaluate_tasks
from keras_mtl.training.registry import STRATEGIES, strategy_of
from keras_mtl.training.strategies import SoftMTL, make_optimizer

log = logging.getLogger(__name__)


#: the balancing of ``--weighting auto`` (the default) for two or more tasks whose losses are summed: on
#: the balancing experiments it kept ASC and SED within 5% of their single-task models where fixed
#: weights lost 40% of SED's event-F1 (issue 19 note)
DEFAULT_BALANCING = "gradnorm"


def resolve_weighting(config: RunConfig) -> RunConfig:
    """``config`` with ``weighting: auto`` made concrete: DEFAULT_BALANCING when two or more tasks are
    trained by a strategy that sums their losses with no fixed weights given (--alpha, loss_weights)
    and no architecture with its own strategy; otherwise fixed."""
    if config.weighting != "auto":
        return config
    own = architectures.get_architecture(config.architecture).strategy
    summing = own is None and config.strategy in STRATEGIES and STRATEGIES[config.strategy].sums_losses
    fixed_weights = config.alpha is not None or bool(config.loss_weights)
    chosen = DEFAULT_BALANCING if len(config.tasks) > 1 and summing and not fixed_weights else "fixed"
    return dataclasses.replace(config, weighting=chosen)


def resolve_batch_norm(config: RunConfig) -> RunConfig:
    """``config`` with its batch normalisation mode for its task count and strategy (normalization.resolve_mode;
    ``auto``: calibrated, or per-task for a strategy that trains one task at a time on a frozen encoder and
    for one epoch); ConfigError for ``joint`` or ``calibrated`` asked for with such a strategy, and for
    ``calibrated`` with one epoch. Under --distribute the calibrated statistics are every worker's mean
    (keras_mtl.models.joint.precise_statistics)."""
    mode = normalization.resolve_mode(config.batch_norm, len(config.tasks))
    if mode in ("joint", "calibrated"):
        own = architectures.get_architecture(config.architecture).strategy
        cls = STRATEGIES.get(config.strategy) if own is None else None
        default = str(config.batch_norm).strip().lower() == "auto"
        one_at_a_time = cls is None or not cls.joint_statistics
        if default and (one_at_a_time or config.training.epochs < 2):
            mode = "per-task"  # the default where calibration does not apply
        elif mode == "calibrated" and config.training.epochs < 2:
            raise ConfigError("--batch-norm calibrated trains its last epochs frozen: it needs 2 epochs or more")
        elif one_at_a_time:
            raise ConfigError(
                f"--batch-norm {mode} normalises the tasks trained together with their mixture's statistics; "
                f"{'the architecture ' + config.architecture if own else '--strategy ' + config.strategy} "
                "trains them one at a time (use per-task)"
            )
    return dataclasses.replace(config, batch_norm=mode)


def _run_folder(config: RunConfig, resume: bool, overwrite: bool) -> Path:
    """This process's run folder, claimed before any data is read (the chief's, or ``<run>/worker-N``)."""
    out = Path(config.output_dir) if config.output_dir else None
    if config.distribute == "multi-worker":
        chief, role = worker_role()
        if not chief:
            out = (out or default_output_dir(config)) / role  # workers other than the chief keep theirs apart
    if resume:
        out.mkdir(parents=True, exist_ok=True)
        return out
    return claim_run_folder(out, default_output_dir(config), overwrite)


def check_strategy_options(config: RunConfig):
    """(name, class) of the run's strategy; ConfigError for options that do not fit together, before
    any data is read (the strategy and the weighting check their own)."""
    config = resolve_weighting(config)
    name, cls = strategy_of(config)
    weighting.check_weighting(config.weighting, name, cls)
    if (config.alpha is not None or config.loss_weights) and config.weighting != "fixed":
        raise ConfigError(f"--alpha (loss_weights) fixes the task weights; --weighting {config.weighting} changes them")
    return name, cls


def training_batches(task, data: PreparedData, tc, augment, seed: int) -> tf.data.Dataset:
    """A task's endless training batches: semi-supervised ones for mean-teacher tasks."""
    if task.name in data.semi:
        weak, unlabeled, strong_real = data.semi[task.name]
        return make_semi_supervised_dataset(
            data.train[task.name],
            weak,
            unlabeled,
            tc.semi_supervised_batches(task.name),
            augment,
            seed,
            strong_real=strong_real,
        )
    return make_dataset(data.train[task.name], tc.batch_for(task.name), training=True, augment=augment, seed=seed)


CALIBRATION = "batch-norm calibration"


def calibration_batches(tasks, data: PreparedData, tc, augment, seed: int, train_ds: tf.data.Dataset):
    """The calibration stage's batches: by default (``training.bn_calibration_augment: false``) the tasks'
    batches unaugmented, as the frozen statistics were estimated and as the deployed network hears them
    (issue 28: the speech set's AR 13.2% -> 5.4%, 3 seeds; docs/method.md); with ``true``, or with
    augmentation off, ``train_ds`` itself."""
    if augment is None or tc.bn_calibration_augment:
        return train_ds
    return unaugmented_batches(tasks, data, tc, seed)


def unaugmented_batches(tasks, data: PreparedData, tc, seed: int) -> tf.data.Dataset:
    """{task: (features, labels)} batches of every task's training data, endless, without augmentation."""
    return tf.data.Dataset.zip({t.name: training_batches(t, data, tc, None, seed) for t in tasks})


def training_stages(config: RunConfig, phases: list) -> list:
    """[(phase, first epoch, end epoch)]: the strategy's phases, ``training.epochs`` each; with
    ``batch_norm: calibrated`` the last ``bn_calibration`` share of the epochs (at least one) becomes the
    calibration stage (``CALIBRATION``): batch normalisation frozen at the mixture's statistics."""
    epochs = config.training.epochs
    stages = [(phase, index * epochs, (index + 1) * epochs) for index, phase in enumerate(phases)]
    if config.batch_norm != "calibrated":
        return stages
    calibration = min(max(1, round(epochs * config.training.bn_calibration)), epochs - 1)  # 2+ epochs: resolved
    phase, first, last = stages[-1]
    return [*stages[:-1], (phase, first, last - calibration), (CALIBRATION, last - calibration, last)]


def calibrate_statistics(network, tasks, data: PreparedData, tc, seed: int, steps: int) -> None:
    """PreciseBN over the tasks' mixture (keras_mtl.models.joint.precise_statistics): one epoch of the
    tasks' training batches (``steps``, unaugmented, semi-supervised ones as training draws them)."""
    batches = unaugmented_batches(tasks, data, tc, seed)
    features = ({name: pair[0] for name, pair in batch.items()} for batch in batches)
    done = joint.precise_statistics(network, features, steps)
    log.info("batch normalisation statistics re-estimated over %d steps of the tasks' mixture", done)


def fit_network(
    network: keras.Model,
    tasks,
    data: PreparedData,
    config: RunConfig,
    epochs: int | None = None,
    strategy_cls=None,
    callbacks=(),
    **strategy_options,
):
    """Trains ``network`` on ``tasks`` (SoftMTL unless ``strategy_cls``) with a fresh optimizer, the
    run's batches, learning-rate schedule and loss weights; ``strategy_options`` override fields of the
    strategy's options. Returns the fitted strategy. For procedures that train a network several
    times (compression, QAT)."""
    tc = config.training
    epochs = tc.epochs if epochs is None else int(epochs)
    names = [t.name for t in tasks]
    steps = tc.steps_per_epoch or max(math.ceil(len(data.train[n]) / tc.batch_for(n)) for n in names)
    cls = strategy_cls or SoftMTL
    options = cls.options_from(config, steps * epochs, [n for n in names if n in data.semi])
    if list(config.tasks) != names:
        options = dataclasses.replace(options, loss_weights=None)
    strategy = cls(network, tasks, dataclasses.replace(options, **strategy_options))
    strategy.compile(optimizer=make_optimizer(tc.learning_rate, steps * epochs, tc.weight_decay, tc.warmup_fraction))
    augment = config.augment if tc.augment else None
    batches = tf.data.Dataset.zip({t.name: training_batches(t, data, tc, augment, config.seed) for t in tasks})
    strategy.fit(
        batches, epochs=epochs, steps_per_epoch=steps, callbacks=list(callbacks), verbose=1 if interactive() else 2
    )
    return strategy


def train(config: RunConfig, dry_run: bool = False, resume: bool = False, overwrite: bool = False) -> dict:
    """Run one experiment; returns the metrics dict (also written to the run folder).
    ``resume``: continue the run in ``config.output_dir`` from its last epoch checkpoint. A new run's
    folder is claimed before any data is read (``claim_run_folder``): one that holds a run is a
    ConfigError unless ``overwrite``."""
    distribution = make_distribution(config)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    tasks = resolve_tasks(list(config.tasks), config.custom_tasks)
    config = resolve_batch_norm(resolve_weighting(config))
    strategy_name, strategy_cls = check_strategy_options(config)
    check_deployable(config)  # a network that trains but cannot export is refused before any work
    started = time.monotonic()

    if dry_run:  # (an experiment's dry run lists rows whose teachers are trained by earlier rows)
        network = build_network(config, tasks)
        return describe_run(network, tasks, config, output_dir=None)
    distill.check_teachers(config, tasks)  # a teacher that cannot teach this run, before any data is read

    given = Path(config.output_dir) if config.output_dir else None
    made_here = not resume and not (given is not None and given.exists())
    out = _run_folder(config, resume, overwrite)
    try:
        data = prepare_data(config, tasks)
        distilled = distill.attach_teacher_outputs(config, tasks, data, out)
    except BaseException:
        if made_here:  # a run refused for its data leaves no empty folder behind (rmdir: only if empty)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    prep_seconds = time.monotonic() - started
    mean, var = feature_statistics(list(data.train.values()))

    def scope():  # a fresh context each time: a strategy scope cannot be entered twice
        return distribution.scope() if distribution is not None else contextlib.nullcontext()

    with scope():
        network = build_network(config, tasks, feature_mean=mean, feature_var=var, weak_output=bool(data.semi))

    tc = config.training
    steps = tc.steps_per_epoch or max(math.ceil(len(data.train[t.name]) / tc.batch_for(t.name)) for t in tasks)
    options = strategy_cls.options_from(config, steps * tc.epochs, list(data.semi))
    with scope():
        strategy = strategy_cls(network, tasks, options)
    augment = config.augment if tc.augment else None
    train_ds = tf.data.Dataset.zip({t.name: training_batches(t, data, tc, augment, config.seed) for t in tasks})
    if distribution is not None:  # each worker takes every N-th batch: batch sizes are per worker
        shard = tf.data.Options()
        shard.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds = train_ds.with_options(shard)
    calibration_ds = calibration_batches(tasks, data, tc, augment, config.seed, train_ds)
    val_ds = {t.name: make_dataset(data.test[t.name], tc.batch_for(t.name), training=False) for t in tasks}

    info = describe_run(network, tasks, config, output_dir=out)
    log.info("run folder: %s", out)
    log.info(
        "training %s on %s: %d epochs x %d steps%s",
        strategy_name,
        "+".join(t.display for t in tasks),
        tc.epochs,
        steps,
        f"; semi-supervised batches for {', '.join(data.semi)}" if data.semi else "",
    )

    history_writer = HistoryWriter(out / "history.csv")
    weighting_callback = weighting.make_weighting(config.weighting, strategy)
    fit_started = time.monotonic()
    phases = strategy.phases()
    stages = training_stages(config, phases)
    average = None
    if tc.bn_calibration_average and stages[-1][0] != CALIBRATION:
        log.warning("training.bn_calibration_average: this run has no calibration stage (--batch-norm %s)",
                    config.batch_norm)  # fmt: skip
    elif tc.bn_calibration_average:
        with scope():
            average = WeightAverage(network)
    checkpointer = EpochCheckpoint(out / "checkpoint", strategy, weighting_callback, history_writer, average)
    callbacks = [EpochValidation(strategy, val_ds), weighting_callback, history_writer, checkpointer]
    if average is not None:  # averaged in before the epoch's checkpoint is written
        callbacks.insert(-1, average)
    if not resume:  # a resumed run's batch log would have a hole
        callbacks.insert(0, BatchLossWriter(out / "batch_loss.csv"))
    saved = latest_checkpoint(out) if resume else None

    def restore(optimizer: bool) -> int:
        """The saved checkpoint read into the strategy, the weighting and the history; its epochs done."""
        folder, state = saved
        checkpoint_of(strategy, optimizer=optimizer, average=average).read(str(folder / "state")).expect_partial()
        weighting_callback.restore(state["weighting"])
        history_writer.rows = list(state["history"])
        return state["epochs_done"]

    if resume and saved is None:
        log.warning("%s has no checkpoint yet: training from the start", out)
    for index, (phase, first_epoch, last_epoch) in enumerate(stages):
        if saved is not None and saved[1]["epochs_done"] >= last_epoch:
            continue  # a finished phase
        epochs = last_epoch - first_epoch
        learning_rate, warmup, start_step = tc.learning_rate, tc.warmup_fraction, 0
        if phase == CALIBRATION:
            strategy.freeze_batch_norm()
            if tc.bn_calibration_layers == "task":
                frozen = strategy.freeze_shared_layers()
                log.info(
                    "calibration stage: %d shared layers kept as re-estimated (%s)", len(frozen), ", ".join(frozen)
                )
            learning_rate, warmup = tc.learning_rate * tc.bn_calibration_learning_rate, 0.0
            start_step = first_epoch * steps  # its optimizer counts on: the teacher's EMA decay and ramp-up
        else:
            strategy.begin_phase(index)
        with scope():
            strategy.compile(
                optimizer=make_optimizer(learning_rate, steps * epochs, tc.weight_decay, warmup, start_step)
            )
            if start_step:
                strategy.optimizer.iterations.assign(start_step)  # a checkpoint inside the stage restores its own
        checkpointer.phase = index
        if average is not None:
            average.active = phase == CALIBRATION
        if saved is not None:  # (compile built the optimizer's slots: the checkpoint restores into them)
            # at a phase boundary (FreezeMTL) the new phase's optimizer starts fresh
            first_epoch = restore(optimizer=saved[1]["epochs_done"] > first_epoch)
            log.info("resumed %s after epoch %d", out, first_epoch)
            saved = None
        if phase == CALIBRATION:
            starts = first_epoch == stages[index][1]  # else resumed inside it: the checkpoint has both
            if starts:
                calibrate_statistics(network, tasks, data, tc, config.seed, steps)
            strategy.restart_teacher(stages[index][1] * steps, copy=starts)
            log.info(
                "epochs %d-%d: batch normalisation frozen at the statistics of the tasks' mixture",
                first_epoch + 1,
                last_epoch,
            )
        elif phase is not None:
            log.info("phase %d/%d: training %s", index + 1, len(phases), phase)
            history_writer.extra = {"phase": phase}
        # a resumed phase goes on where the data order left off: its finished epochs' batches are skipped
        done_in_phase = (first_epoch - stages[index][1]) * steps
        stage_ds = calibration_ds if phase == CALIBRATION else train_ds
        strategy.fit(
            stage_ds.skip(done_in_phase) if done_in_phase else stage_ds,
            initial_epoch=first_epoch,
            epochs=last_epoch,
            steps_per_epoch=steps,
            callbacks=callbacks,
            verbose=1 if interactive() else 2,
        )
    if saved is not None:  # killed after its last epoch's checkpoint (e.g. in evaluation): its network, not a new one
        restore(optimizer=False)
        trained = [i for i, stage in enumerate(stages) if stage[0] != CALIBRATION]
        strategy.begin_phase(trained[-1])  # FreezeMTL: its last phase's layers frozen, as they were saved
        log.info("%s: every epoch had finished; its network restored from %s", out, saved[0])
    averaged = average.apply() if average is not None else 0
    if averaged:
        log.info("the network: the mean of the calibration stage's %d epochs' weights", averaged)
    fit_seconds = time.monotonic() - fit_started

    facts = {
        "model": info["profile"]["total"],
        "shared": info["profile"]["parts"]["shared"],
        "strategy": strategy_name,
        "weighting": config.weighting,
        "batch_norm": config.batch_norm,
        "loss_weights": {name: float(w.numpy()) for name, w in strategy.loss_weights.items()},
        "mean_teacher": sorted(data.semi),
        "distillation": distilled,
        "phases": [p for p in phases if p is not None],
        "epochs": stages[-1][2],
        "bn_calibration_epochs": stages[-1][2] - stages[-1][1] if stages[-1][0] == CALIBRATION else 0,
        "weight_average_epochs": averaged,
        "steps_per_epoch": steps,
        "seconds": {"data": round(prep_seconds, 1), "training": round(fit_seconds, 1)},
        "data_roots": {k: str(v) for k, v in data.roots.items()},
        "output_dir": str(out),
    }
    if stages[-1][0] == CALIBRATION:  # the saved network is an ordinary one (fine-tuning, QAT, a teacher)
        normalization.freeze_batch_norm(network, frozen=False)
        strategy.freeze_shared_layers(frozen=False)
    # everything training made is on disk before evaluation, which can fail on labels a metric rejects
    save_network(out, network)
    write_training_facts(out, facts)
    reporting.plot_history(history_writer.rows, tasks, out / "training_curves.png")
    try:
        results = evaluate_tasks(strategy.paths, tasks, data, tc, info["profile"])
    except Exception as exc:
        log.debug("evaluation failed", exc_info=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EvaluationError(
            f"{out}: training finished and the network is saved, but evaluation failed "
            f"({type(exc).__name__}: {first}); fix the cause, then run: keras-mtl evaluate {out}"
        ) from exc
    facts["seconds"]["total"] = round(time.monotonic() - started, 1)
    metrics = {"tasks": results, **facts}
    write_metrics(out, metrics)
    return metrics


def interactive() -> bool:
    return sys.stdout.isatty()
