"""Pruning with tensorflow-model-optimization: Lottery Ticket (LTH) and sparse sharing (LT4REC).

Lottery Ticket Hypothesis (LTH; Frankle & Carbin 2019): iterative magnitude pruning of a multi-task
network. Train; prune ``rate`` of each layer's surviving weights by magnitude; rewind the survivors
to their initial values (or those after ``rewind_epoch`` epochs); train again with a fresh optimizer;
repeat until the non-zero parameters reach the target. Pruned weights are held at zero by tfmot's
``prune_low_magnitude`` wrappers, whose masks we set (``FixedMasks``: tfmot never recomputes them);
``KeepPruned`` re-applies the masks after every optimizer step, so they are exactly zero throughout.

LT4REC (Xiao et al. 2020; sparse sharing): a winning-ticket mask per task, found by single-task IMP
from the same initial weights; then one set of weights trained jointly, tasks taking turns, task t's
forward pass and update using W * M_t. Weights in several masks are shared, the others belong to one
task; each task is evaluated through its own mask.

Pruned weights: convolution and dense kernels and GRU kernels. Biases, batch normalisation, the
attention scores and the input normalisation are kept (a few percent of the parameters).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.runs.network import build_network
from keras_mtl.training.evaluate import evaluate_task
from keras_mtl.training.fit import fit_network
from keras_mtl.training.strategies import HardMTL, StrategyOptions

log = logging.getLogger(__name__)


PRUNED_WEIGHTS = (
    (keras.layers.Conv2D, ("kernel",)),
    (keras.layers.Dense, ("kernel",)),
    (keras.layers.GRU, ("kernel", "recurrent_kernel")),
)


def prunable_weights(network: keras.Model) -> dict:
    """{"<layer>:<weight>": variable} of the weights pruning acts on, in tfmot's order per layer."""
    found = {}
    for layer in network.layers:
        found.update(_single(getattr(layer, "layer", layer)))  # a tfmot wrapper's layer
    return found


def full_masks(network: keras.Model) -> dict:
    return {key: np.ones(v.shape, np.float32) for key, v in prunable_weights(network).items()}


def prune_by_magnitude(weights: dict, masks: dict, fraction: float) -> dict:
    """New masks: in each weight, the ``fraction`` of surviving entries with the smallest magnitude
    are dropped (rounded to whole weights; ties go to the earlier entry)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"pruning fraction must be in [0, 1), got {fraction}")
    pruned = {}
    for key, mask in masks.items():
        value = np.abs(np.asarray(weights[key], np.float64)).ravel()
        alive = mask.ravel() > 0
        keep = int(alive.sum()) - int(round(alive.sum() * fraction))
        scores = np.where(alive, value, -1.0)
        order = np.argsort(-scores, kind="stable")
        new = np.zeros(value.size, np.float32)
        new[order[:keep]] = 1.0
        pruned[key] = new.reshape(mask.shape)
    return pruned


def pruned_count(masks: dict) -> int:
    return int(sum(m.size - int(m.sum()) for m in masks.values()))


def sparsity(masks: dict) -> dict:
    """Fraction of zeros per pruned weight."""
    return {key: 1.0 - float(m.mean(dtype=np.float64)) for key, m in masks.items()}


def round_fraction(nonzero: int, target: int, alive: int, rate: float) -> float:
    """The fraction of surviving weights to prune in the next round: ``rate``, or less in the last
    round so that the non-zero parameters land on ``target``."""
    excess = nonzero - target
    if excess <= 0 or alive <= 0:
        return 0.0
    return min(rate, excess / alive)


class FixedMasks:
    """A tfmot pruning schedule that never prunes: the masks are the ones set by the caller."""

    def __new__(cls):
        import tensorflow_model_optimization as tfmot

        class _FixedMasks(tfmot.sparsity.keras.PruningSchedule):
            def __call__(self, step):
                return tf.constant(False), tf.constant(0.0)

            def get_config(self):
                return {"class_name": "FixedMasks", "config": {}}

        return _FixedMasks()


def wrap_for_pruning(network: keras.Model) -> keras.Model:
    """A model of the same graph whose prunable layers are tfmot ``prune_low_magnitude`` wrappers around
    the network's own layers: the two share every weight, the wrappers add the masks."""
    import tensorflow_model_optimization as tfmot

    kinds = tuple(kind for kind, _ in PRUNED_WEIGHTS)

    def wrap(layer):
        if isinstance(layer, kinds):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=FixedMasks())
        return layer

    return keras.models.clone_model(network, clone_function=wrap)


def pruning_wrappers(model: keras.Model) -> list:
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    return [layer for layer in model.layers if isinstance(layer, PruneLowMagnitude)]


def set_masks(wrapped: keras.Model, masks: dict) -> None:
    """Puts ``masks`` into the wrappers of ``wrapped`` and zeroes the pruned weights."""
    for wrapper in pruning_wrappers(wrapped):
        if not wrapper.built:
            raise ConfigError(f"pruning: wrapper {wrapper.name} is not built")
        keys = list(_single(wrapper.layer))
        if len(keys) != len(wrapper.pruning_vars):
            raise ConfigError(
                f"pruning: {wrapper.layer.name} has {len(wrapper.pruning_vars)} prunable weights, expected {len(keys)}"
            )
        for key, (weight, mask, _threshold) in zip(keys, wrapper.pruning_vars):
            if tuple(mask.shape) != masks[key].shape:
                raise ConfigError(f"pruning: mask {key} has shape {masks[key].shape}, the weight {tuple(mask.shape)}")
            mask.assign(masks[key])
        wrapper.pruning_obj.weight_mask_op()


def _single(layer) -> dict:
    """The prunable weights of one layer."""
    for kind, names in PRUNED_WEIGHTS:
        if isinstance(layer, kind):
            owner = layer.cell if isinstance(layer, keras.layers.GRU) else layer
            return {f"{layer.name}:{name}": getattr(owner, name) for name in names}
    return {}


class KeepPruned(keras.callbacks.Callback):
    """Re-applies the masks after every training batch (tfmot applies them before each forward pass
    and at epoch ends; in between, the optimizer's step would leave pruned weights non-zero)."""

    def __init__(self, wrapped: keras.Model):
        super().__init__()
        self.wrappers = pruning_wrappers(wrapped)

    def on_train_batch_end(self, batch, logs=None):
        for wrapper in self.wrappers:
            wrapper.pruning_obj.weight_mask_op()


class WeightsAtEpoch(keras.callbacks.Callback):
    """Keeps a copy of ``network``'s weights after epoch ``epoch`` (late rewinding)."""

    def __init__(self, network: keras.Model, epoch: int):
        super().__init__()
        self.network, self.epoch, self.weights = network, int(epoch), None

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            self.weights = self.network.get_weights()


def model_params(network: keras.Model) -> int:
    """Parameters as the run's profile counts them (trainable weights)."""
    return int(sum(int(np.prod(v.shape)) for v in network.trainable_weights))


def nonzero_params(total: int, masks: dict) -> int:
    return total - pruned_count(masks)


def _check_target(total: int, prunable: int, target: int) -> None:
    floor = total - prunable
    if not floor < target < total:
        raise ConfigError(
            f"--target-params {target:,}: must lie between the parameters pruning cannot remove "
            f"({floor:,}: biases, batch norm, attention scores) and the model's {total:,}"
        )


def _tolerance(total: int) -> int:
    return max(1, total // 1000)


def _evaluate_tasks(strategy, tasks, data, config) -> dict:
    """Each task's test metrics through the strategy's path for it."""
    return {task.name: evaluate_task(strategy.paths[task.name], task, data, config.training) for task in tasks}


def lottery_ticket(
    network: keras.Model,
    tasks: Sequence,
    data,
    config,
    target_params: int,
    rate: float = 0.2,
    epochs: int | None = None,
    rewind_epoch: int = 0,
    max_rounds: int = 30,
    on_round=None,
    callbacks: Sequence = (),
):
    """Iterative magnitude pruning with rewinding (see the module docstring), in place on ``network``,
    which ends holding the last round's trained sparse weights. Returns (masks, rounds, metrics):
    ``rounds`` one dict per training (round, fraction pruned before it, non-zero params, sparsity per
    weight, headline per task); ``metrics`` the last round's task metrics. ``callbacks`` join every
    round's training."""
    import tensorflow_model_optimization as tfmot

    if not 0.0 < rate < 1.0:
        raise ConfigError(f"--rate {rate}: the fraction pruned per round must be between 0 and 1")
    total, masks = model_params(network), full_masks(network)
    _check_target(total, sum(m.size for m in masks.values()), target_params)
    rewind_to = network.get_weights()
    wrapped = wrap_for_pruning(network)
    rounds, fraction = [], 0.0
    for index in range(max_rounds + 1):
        set_masks(wrapped, masks)
        keeper = WeightsAtEpoch(network, rewind_epoch) if index == 0 and rewind_epoch > 0 else None
        log.info(
            "LTH round %d: %s non-zero parameters of %s (%.1f%% pruned)",
            index,
            f"{nonzero_params(total, masks):,}",
            f"{total:,}",
            100.0 * pruned_count(masks) / total,
        )
        hooks = [tfmot.sparsity.keras.UpdatePruningStep(), KeepPruned(wrapped), *callbacks] + (
            [keeper] if keeper else []
        )
        strategy = fit_network(wrapped, tasks, data, config, epochs, callbacks=hooks)
        if keeper is not None:
            if keeper.weights is None:
                raise ConfigError(
                    f"--rewind-epoch {rewind_epoch}: a round trains only {epochs or config.training.epochs} epochs"
                )
            rewind_to = keeper.weights
        metrics = _evaluate_tasks(strategy, tasks, data, config)
        row = {
            "round": index,
            "fraction": fraction,
            "nonzero_params": nonzero_params(total, masks),
            "sparsity": sparsity(masks),
            "headline": {t.name: metrics[t.name][t.headline] for t in tasks},
        }
        rounds.append(row)
        if on_round is not None:
            on_round(row)
        alive = sum(int(m.sum()) for m in masks.values())
        fraction = round_fraction(row["nonzero_params"], target_params, alive, rate)
        if row["nonzero_params"] <= target_params + _tolerance(total) or fraction == 0.0:
            break
        trained = {key: v.numpy() for key, v in prunable_weights(network).items()}
        masks = prune_by_magnitude(trained, masks, fraction)
        network.set_weights(rewind_to)  # survivors back to their early values; set_masks zeroes the rest
    else:
        log.warning("LTH: stopped after %d rounds above the target", max_rounds)
    return masks, rounds, metrics


@contextlib.contextmanager
def masked(network: keras.Model, masks: dict):
    """Within the block, ``network``'s pruned weights hold W * M (one task's view); restored after."""
    variables = prunable_weights(network)
    saved = {key: variables[key].numpy() for key in masks}
    try:
        for key, mask in masks.items():
            variables[key].assign(saved[key] * mask)
        yield network
    finally:
        for key, value in saved.items():
            variables[key].assign(value)


def union_masks(task_masks: dict, keys) -> dict:
    """Per pruned weight of the joint network: kept if any task keeps it (a weight on no task's path: pruned)."""
    union = {}
    for key, variable_shape in keys.items():
        found = [masks[key] for masks in task_masks.values() if key in masks]
        union[key] = np.maximum.reduce(found) if found else np.zeros(variable_shape, np.float32)
    return union


@dataclasses.dataclass(frozen=True)
class SparseSharingOptions(StrategyOptions):
    """LT4REC: ``task_masks``, {task: {weight key: 0/1 mask}} (keys as in ``prunable_weights``)."""

    task_masks: dict | None = None


class SparseSharingMTL(HardMTL):
    """LT4REC joint training: tasks take turns; on task t's turn the network's pruned weights are
    W * M_t for the forward pass, and only entries inside M_t are updated (gradient masked, the
    optimizer's momentum and decay kept off the rest)."""

    Options = SparseSharingOptions

    def __init__(self, network: keras.Model, tasks: Sequence, options: SparseSharingOptions | None = None, **kwargs):
        super().__init__(network, tasks, options, **kwargs)
        task_masks = self.options.task_masks or {}
        variables = prunable_weights(network)
        self.task_masks = {}
        for name in self.task_names:
            if name not in task_masks:
                raise ConfigError(f"LT4REC: no mask for task {name}")
            unknown = sorted(set(task_masks[name]) - set(variables))
            if unknown:
                raise ConfigError(
                    f"LT4REC: task {name}'s mask names weights the network lacks: {', '.join(unknown[:4])}"
                )
            self.task_masks[name] = [
                (variables[key], tf.constant(task_masks[name][key], tf.float32)) for key in sorted(task_masks[name])
            ]

    def _turn_step(self, task, data):
        features, targets = data[task.name]
        pairs = self.task_masks[task.name]
        full = [variable.read_value() for variable, _ in pairs]
        for (variable, mask), value in zip(pairs, full):
            variable.assign(value * mask)
        variables = self.turn_variables(task)
        with tf.GradientTape() as tape:
            loss, strong_targets, predictions = self.task_step_loss(task, features, targets, training=True)
            total = loss + self.regularization()
        gradients = tape.gradient(total, variables)
        mask_of = {variable.ref(): mask for variable, mask in pairs}
        gradients = [
            g * mask_of[v.ref()] if g is not None and v.ref() in mask_of else g for g, v in zip(gradients, variables)
        ]
        for (variable, _), value in zip(pairs, full):
            variable.assign(value)
        self.optimizer.apply_gradients(zip(gradients, variables))
        for (variable, mask), value in zip(pairs, full):
            variable.assign(mask * variable + (1.0 - mask) * value)
        self._record_task(task.name, loss, strong_targets, predictions)
        self.total_tracker.update_state(loss)
        return loss


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> None:
    """Every layer of ``target`` with weights takes those of ``source``'s layer of the same name."""
    for layer in target.layers:
        if layer.weights:
            try:
                layer.set_weights(source.get_layer(layer.name).get_weights())
            except ValueError:
                raise ConfigError(
                    f"LT4REC: the multi-task network has no layer {layer.name} for the single-task one"
                ) from None


def sparse_sharing(
    network: keras.Model,
    tasks: Sequence,
    data,
    config,
    target_params: int,
    rate: float = 0.2,
    epochs: int | None = None,
    max_rounds: int = 30,
    on_round=None,
):
    """LT4REC (see the module docstring), in place on ``network``. Returns (task masks, rounds, metrics):
    the masks by task, one dict per pruning round (union non-zero params, per-task sparsity and the
    single-task headline of that round's training), and each task's metrics through its own mask."""
    import tensorflow_model_optimization as tfmot

    if not 0.0 < rate < 1.0:
        raise ConfigError(f"--rate {rate}: the fraction pruned per round must be between 0 and 1")
    if len(tasks) < 2:
        raise ConfigError("LT4REC shares weights between tasks: the run needs two or more")
    total = model_params(network)
    keys = {key: tuple(v.shape) for key, v in prunable_weights(network).items()}
    _check_target(total, sum(int(np.prod(s)) for s in keys.values()), target_params)
    singles = {}
    for task in tasks:
        single = build_network(config, [task], weak_output=task.name in data.semi)
        copy_weights_by_name(network, single)
        singles[task.name] = (single, wrap_for_pruning(single), single.get_weights())
    masks = {name: full_masks(single) for name, (single, _, _) in singles.items()}

    def union_nonzero(candidate):
        return nonzero_params(total, union_masks(candidate, keys))

    rounds, index = [], 0
    while True:
        headline = {}
        for task in tasks:
            single, wrapped, _ = singles[task.name]
            set_masks(wrapped, masks[task.name])
            log.info(
                "LT4REC round %d: single-task %s, %.1f%% of its weights pruned",
                index,
                task.name,
                100.0 * pruned_count(masks[task.name]) / sum(m.size for m in masks[task.name].values()),
            )
            strategy = fit_network(
                wrapped,
                [task],
                data,
                config,
                epochs,
                callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), KeepPruned(wrapped)],
            )
            headline[task.name] = evaluate_task(strategy.paths[task.name], task, data, config.training)[task.headline]
        trained = {name: {key: v.numpy() for key, v in prunable_weights(singles[name][0]).items()} for name in masks}

        def candidate(fraction):
            return {name: prune_by_magnitude(trained[name], masks[name], fraction) for name in masks}

        fraction = rate
        if union_nonzero(candidate(rate)) < target_params:  # the last round: find the fraction landing on the target
            low, high = 0.0, rate
            for _ in range(30):
                fraction = (low + high) / 2
                low, high = (fraction, high) if union_nonzero(candidate(fraction)) > target_params else (low, fraction)
            fraction = high
        masks = candidate(fraction)
        nonzero = union_nonzero(masks)
        row = {
            "round": index,
            "single_headline": headline,
            "fraction": fraction,
            "nonzero_params": nonzero,
            "task_sparsity": {name: pruned_count(m) / sum(v.size for v in m.values()) for name, m in masks.items()},
        }
        rounds.append(row)
        if on_round is not None:
            on_round(row)
        index += 1
        if nonzero <= target_params + _tolerance(total) or index > max_rounds:
            break
        for name, (single, _, initial) in singles.items():
            single.set_weights(initial)

    union = union_masks(masks, keys)
    variables = prunable_weights(network)
    for key, mask in union.items():  # weights outside every mask start (and stay) at zero
        variables[key].assign(variables[key].numpy() * mask)
    log.info("LT4REC: joint training, %s non-zero parameters of %s", f"{nonzero_params(total, union):,}", f"{total:,}")
    # SparseSharingMTL updates one task per step: no sum of task losses for the run's balancing to weight
    joint = dataclasses.replace(config, weighting="fixed")
    strategy = fit_network(network, tasks, data, joint, epochs, strategy_cls=SparseSharingMTL, task_masks=masks)
    metrics = {}
    for task in tasks:
        with masked(network, masks[task.name]):
            metrics[task.name] = evaluate_task(strategy.paths[task.name], task, data, config.training)
    return masks, rounds, metrics
