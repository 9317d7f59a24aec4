"""Callbacks of a training run: held-out validation per epoch, history and batch-loss CSVs, epoch
checkpoints, the calibration stage's weight average."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from keras_mtl.core import fileio
from keras_mtl.core.backend import keras, tf
from keras_mtl.core.fileio import write_rows


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


class BatchLossWriter(keras.callbacks.Callback):
    """Writes batch_loss.csv at every epoch end: per training batch, the step and the losses Keras
    reports after it (running means over the epoch so far, total and per task); the learning curve
    at batch resolution (keras_mtl.studies.analysis)."""

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

    def __init__(self, folder: Path, strategy, weighting_callback, history_writer, average=None):
        super().__init__()
        self.average = average
        self.folder = folder
        self.strategy = strategy
        self.weighting_callback = weighting_callback
        self.history_writer = history_writer
        self.phase = 0

    def on_epoch_end(self, epoch, logs=None):
        name = f"epoch-{epoch + 1}"
        target = self.folder / name
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoint_of(self.strategy, average=self.average).write(str(tmp / "state"))
        fileio.write_json(
            tmp / "resume.json",
            {
                "epochs_done": epoch + 1,
                "phase": self.phase,
                "weighting": self.weighting_callback.state(),
                "history": self.history_writer.rows,
            },
        )
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        fileio.write_text(self.folder / "latest", name + "\n")
        for old in self.folder.glob("epoch-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)


class WeightAverage(keras.callbacks.Callback):
    """Stochastic weight averaging (Izmailov et al. 2018, "Averaging weights leads to wider optima and
    better generalization") over the calibration stage (``training.bn_calibration_average``): the
    network's weights at the end of each epoch while ``active`` go into a running mean, and ``apply``
    makes the mean the network's. Batch normalisation is frozen in that stage: its statistics are the
    same at every epoch, and a running mean keeps a constant weight bit for bit. Make it inside the
    run's distribution scope; its ``variables`` go into the epoch checkpoints (``checkpoint_of``), so
    --resume goes on averaging."""

    def __init__(self, network):
        super().__init__()
        self.network = network
        self.pairs = [
            (w, tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False, name="average/" + w.name.replace(":", "_")))
            for w in network.weights
            if w.dtype.is_floating
        ]
        self.count = tf.Variable(0.0, trainable=False, name="average/count")
        self.active = False

    @property
    def variables(self) -> list:
        return [mean for _, mean in self.pairs] + [self.count]

    def on_epoch_end(self, epoch, logs=None):
        if not self.active:
            return
        self.count.assign_add(1.0)
        for weight, mean in self.pairs:
            mean.assign_add((weight - mean) / tf.cast(self.count, mean.dtype))

    def apply(self) -> int:
        """Sets the network's weights to the mean of the averaged epochs; returns how many (0: unchanged)."""
        count = int(self.count.numpy())
        if count:
            for weight, mean in self.pairs:
                weight.assign(mean)
        return count


def checkpoint_of(strategy, optimizer: bool = True, average: WeightAverage | None = None) -> tf.train.Checkpoint:
    parts = {"network": strategy.network, "loss_weights": list(strategy.loss_weights.values())}
    if average is not None:
        parts["weight_average"] = average.variables
    if optimizer:
        parts["optimizer"] = strategy.optimizer
    if strategy.teacher is not None:
        parts["teacher"] = strategy.teacher
    if getattr(strategy, "balancer", None) is not None and (strategy.balancer.variables or strategy.balancer.state):
        parts["balancer"] = list(strategy.balancer.variables) + list(strategy.balancer.state)
    return tf.train.Checkpoint(**parts)
