"""Task loss weights that change during training (seed 003), as Keras callbacks.

fixed  the strategy's weights as configured (default: the mean over tasks)
dwa    Dynamic Weight Average (Liu, Johns & Davison 2019): w_k = K * softmax_k(r_k / T) with
       r_k = L_k(t-1) / L_k(t-2), the ratio of task k's mean training loss over the two previous
       epochs, T = 2; all weights are 1 for the first two epochs.

The weights in force are written to the epoch logs as ``weight_<task>`` (so history.csv has them).
"""
from __future__ import annotations

import numpy as np

from keras_mtl.backend import keras
from keras_mtl.errors import ConfigError


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


class DynamicWeightAverage(LossWeighting):
    def __init__(self, strategy, temperature: float = 2.0):
        super().__init__(strategy)
        self.temperature = temperature
        self.losses: list[np.ndarray] = []

    def on_train_begin(self, logs=None):
        for weight in self.strategy.loss_weights.values():
            weight.assign(1.0)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)  # log the weights used during this epoch
        logs = logs or {}
        self.losses.append(np.array([logs[f"{name}_loss"] for name in self.strategy.task_names], dtype=np.float64))
        if len(self.losses) >= 2:
            weights = dwa_weights(self.losses[-1], self.losses[-2], self.temperature)
            for name, value in zip(self.strategy.task_names, weights):
                self.strategy.loss_weights[name].assign(float(value))


WEIGHTINGS = {"fixed": LossWeighting, "dwa": DynamicWeightAverage}


def check_weighting(name: str) -> None:
    if name not in WEIGHTINGS:
        raise ConfigError(f"unknown weighting {name!r} (known: {', '.join(sorted(WEIGHTINGS))})")


def make_weighting(name: str, strategy) -> LossWeighting:
    check_weighting(name)
    return WEIGHTINGS[name](strategy)
