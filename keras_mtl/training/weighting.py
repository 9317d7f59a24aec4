"""Task loss weights that change during training (seed 003), as Keras callbacks.

fixed  the strategy's weights as configured (default: the mean over tasks)
dwa    Dynamic Weight Average (Liu, Johns & Davison 2019): w_k = K * softmax_k(r_k / T) with
       r_k = L_k(t-1) / L_k(t-2), the ratio of task k's mean training loss over the two previous
       epochs, T = 2; all weights are 1 for the first two epochs.
mfl    focal-style dynamic task weighting. Nada, Imoto & Tsuchiya (2023) adapt the ASC/SED loss
       weights with a "multi-focal loss" (MFL); their paper is not available to us and its exact
       formula could not be established, so this is the focal form of dynamic task prioritisation
       (Guo et al., ECCV 2018) that MFL builds on: w_k proportional to -(1 - kappa_k)^gamma * log(kappa_k),
       kappa_k a moving average (momentum 0.5) of task k's training metric over epochs (accuracy
       for clip tasks, frame F1 for frame tasks), gamma = 2; weights rescaled to sum to K, like DWA,
       so that the comparison is about balance, not scale; all weights are 1 in the first epoch.
       A task that is still poor (small kappa) gets a large weight; a solved task fades out.

The weights in force are written to the epoch logs as ``weight_<task>`` (so history.csv has them).
"""

from __future__ import annotations

import numpy as np

from keras_mtl.core.backend import keras
from keras_mtl.core.errors import ConfigError
from keras_mtl.training.balancing import BALANCERS
from keras_mtl.training.strategies import SUMMING


def dwa_weights(previous: np.ndarray, before_previous: np.ndarray, temperature: float = 2.0) -> np.ndarray:
    """DWA weights from the per-task mean losses of epochs t-1 and t-2."""
    ratios = np.asarray(previous, dtype=np.float64) / np.asarray(before_previous, dtype=np.float64)
    scaled = np.exp(ratios / temperature - np.max(ratios / temperature))
    return len(ratios) * scaled / scaled.sum()


class LossWeighting(keras.callbacks.Callback):
    """Base: logs the strategy's loss weights at every epoch end."""

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            for name, weight in self.strategy.loss_weights.items():
                logs[f"weight_{name}"] = float(weight.numpy())

    def state(self) -> dict:
        """What a resumed run needs to continue the weighting (JSON-serialisable)."""
        return {}

    def restore(self, state: dict) -> None:
        self.restored = True


class _StartsAtOne(LossWeighting):
    """Dynamic weightings: all weights 1 when training starts (not when a run resumes)."""

    restored = False

    def on_train_begin(self, logs=None):
        if not self.restored:
            for weight in self.strategy.loss_weights.values():
                weight.assign(1.0)
            self.restored = True  # a later stage of the run (calibrated batch norm) goes on with its weights


class DynamicWeightAverage(_StartsAtOne):
    def __init__(self, strategy, temperature: float = 2.0):
        super().__init__(strategy)
        self.temperature = temperature
        self.losses: list[np.ndarray] = []

    def state(self) -> dict:
        return {"losses": [loss.tolist() for loss in self.losses[-2:]]}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.losses = [np.asarray(loss) for loss in state.get("losses", [])]

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)  # log the weights used during this epoch
        logs = logs or {}
        self.losses.append(np.array([logs[f"{name}_loss"] for name in self.strategy.task_names], dtype=np.float64))
        if len(self.losses) >= 2:
            weights = dwa_weights(self.losses[-1], self.losses[-2], self.temperature)
            for name, value in zip(self.strategy.task_names, weights):
                self.strategy.loss_weights[name].assign(float(value))


def focal_task_weights(kappa: np.ndarray, gamma: float = 2.0) -> np.ndarray:
    """-(1 - kappa)^gamma * log(kappa) per task, rescaled to sum to the number of tasks."""
    kappa = np.clip(np.asarray(kappa, dtype=np.float64), 1e-3, 1.0 - 1e-3)
    raw = -((1.0 - kappa) ** gamma) * np.log(kappa)
    return len(raw) * raw / raw.sum()


class FocalTaskWeighting(_StartsAtOne):
    """The ``mfl`` weighting (see the module docstring for what is and is not implemented)."""

    def __init__(self, strategy, gamma: float = 2.0, momentum: float = 0.5):
        super().__init__(strategy)
        self.gamma = gamma
        self.momentum = momentum
        self.kappa: np.ndarray | None = None

    def state(self) -> dict:
        return {"kappa": None if self.kappa is None else self.kappa.tolist()}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.kappa = None if state.get("kappa") is None else np.asarray(state["kappa"])

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        logs = logs or {}
        metric = np.array([logs[self.strategy.task_metrics[name][0].name] for name in self.strategy.task_names])
        self.kappa = metric if self.kappa is None else self.momentum * self.kappa + (1 - self.momentum) * metric
        for name, value in zip(self.strategy.task_names, focal_task_weights(self.kappa, self.gamma)):
            self.strategy.loss_weights[name].assign(float(value))


# uncertainty, gradnorm, pcgrad, cagrad, famo act inside the strategy's step (keras_mtl.training.balancing); their
# callback logs the weights in force and the pairwise gradient cosines the strategy tracks
WEIGHTINGS = {
    "fixed": LossWeighting,
    "dwa": DynamicWeightAverage,
    "mfl": FocalTaskWeighting,
    **{name: LossWeighting for name in BALANCERS},
}


def check_weighting(name: str, strategy: str | None = None, strategy_cls=None) -> None:
    """ConfigError for an unknown weighting, or a dynamic one with a strategy (``strategy_cls``, named
    ``strategy``) whose loss is no weighted sum of task losses."""
    if name not in WEIGHTINGS:
        raise ConfigError(f"unknown weighting {name!r} (known: {', '.join(WEIGHTINGS)})")
    if name != "fixed" and strategy_cls is not None and not strategy_cls.sums_losses:
        raise ConfigError(
            f"--weighting {name} weights a sum of task losses; strategy {strategy} updates one task "
            f"per step (use it with {' or '.join(SUMMING)})"
        )


def make_weighting(name: str, strategy) -> LossWeighting:
    check_weighting(name)
    return WEIGHTINGS[name](strategy)
