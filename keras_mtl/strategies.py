"""Multi-task training strategies as ``keras.Model`` subclasses that override ``train_step``.

A strategy wraps the functional multi-task network. Each training step receives one batch
per task, ``{task name: (features, targets)}`` (tasks have different clip lengths, so their
batches cannot be stacked), computes every task's loss on its own batch through that task's
path of the network, and combines the losses with the strategy's weights.
"""
from __future__ import annotations

from typing import Sequence

from keras_mtl.backend import keras, tf
from keras_mtl.errors import ConfigError
from keras_mtl.models import task_submodel


class MultiTaskStrategy(keras.Model):
    """Base class: per-task paths, per-task loss trackers and metrics, weighted loss sum."""

    def __init__(self, network: keras.Model, tasks: Sequence, loss_weights: dict | None = None, **kwargs):
        super().__init__(name=kwargs.pop("name", type(self).__name__.lower()), **kwargs)
        self.network = network
        self.tasks = list(tasks)
        self.task_names = [t.name for t in self.tasks]
        self.paths = {t.name: task_submodel(network, t.name) for t in self.tasks}
        weights = loss_weights or {t.name: 1.0 / len(self.tasks) for t in self.tasks}
        unknown = set(weights) - set(self.task_names)
        if unknown:
            raise ConfigError(f"loss weights name unknown task(s): {', '.join(sorted(unknown))}")
        self.loss_weights = {name: tf.Variable(float(weights.get(name, 0.0)), trainable=False, name=f"weight_{name}")
                             for name in self.task_names}
        self.loss_trackers = {name: keras.metrics.Mean(name=f"{name}_loss") for name in self.task_names}
        self.total_tracker = keras.metrics.Mean(name="loss")
        self.task_metrics = {t.name: t.keras_metrics() for t in self.tasks}

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    @property
    def metrics(self):
        tracked = [self.total_tracker, *self.loss_trackers.values()]
        for metric_list in self.task_metrics.values():
            tracked.extend(metric_list)
        return tracked

    def task_losses(self, data, training: bool) -> dict:
        """{task: (loss, targets, predictions)} on each task's own batch."""
        out = {}
        for task in self.tasks:
            features, targets = data[task.name]
            predictions = self.paths[task.name](features, training=training)
            out[task.name] = (task.loss(targets, predictions), targets, predictions)
        return out

    def combine(self, losses: dict):
        return tf.add_n([self.loss_weights[name] * losses[name][0] for name in self.task_names])

    def _record(self, total, losses):
        self.total_tracker.update_state(total)
        for name, (loss, targets, predictions) in losses.items():
            self.loss_trackers[name].update_state(loss)
            for metric in self.task_metrics[name]:
                metric.update_state(targets, predictions)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        losses = self.task_losses(data, training=False)
        return self._record(self.combine(losses), losses)


class SoftMTL(MultiTaskStrategy):
    """All tasks trained jointly through the shared encoder; loss = weighted sum (default: mean)."""

    def train_step(self, data):
        with tf.GradientTape() as tape:
            losses = self.task_losses(data, training=True)
            total = self.combine(losses)
            if self.network.losses:
                total += tf.add_n(self.network.losses)
        variables = self.network.trainable_variables
        gradients = tape.gradient(total, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._record(total, losses)


class HardMTL(MultiTaskStrategy):
    """Tasks take turns (seed 000): step s updates the shared encoder and the decoder of task
    s mod K on that task's batch only; the other decoders are not touched (no gradient, no
    optimizer update, no weight decay)."""

    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        self.optimizer.build(self.network.trainable_variables)  # slots exist before the branches run

    def _task_step(self, task, data):
        def run():
            features, targets = data[task.name]
            with tf.GradientTape() as tape:
                predictions = self.paths[task.name](features, training=True)
                loss = task.loss(targets, predictions)
                total = loss + (tf.add_n(self.network.losses) if self.network.losses else 0.0)
            variables = self.paths[task.name].trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
            self.loss_trackers[task.name].update_state(loss)
            for metric in self.task_metrics[task.name]:
                metric.update_state(targets, predictions)
            return loss

        return run

    def train_step(self, data):
        turn = tf.cast(self.optimizer.iterations % len(self.tasks), tf.int32)
        loss = tf.switch_case(turn, [self._task_step(task, data) for task in self.tasks])
        self.total_tracker.update_state(loss)
        return {m.name: m.result() for m in self.metrics}


STRATEGIES = {"soft": SoftMTL, "hard": HardMTL}


def get_strategy(name: str):
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r} (known: {', '.join(sorted(STRATEGIES))})")
    return STRATEGIES[name]


@keras.utils.register_keras_serializable(package="keras_mtl")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over the first ``warmup_fraction`` of steps, then cosine decay to 0 (seed 000)."""

    def __init__(self, peak: float, total_steps: int, warmup_fraction: float = 0.1):
        self.peak = float(peak)
        self.total_steps = max(1, int(total_steps))
        self.warmup_fraction = float(warmup_fraction)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        total = tf.cast(self.total_steps, tf.float32)
        warmup = tf.maximum(1.0, tf.math.round(total * self.warmup_fraction))
        warm = self.peak * (step + 1.0) / warmup
        progress = tf.clip_by_value((step - warmup) / tf.maximum(1.0, total - warmup), 0.0, 1.0)
        cosine = 0.5 * self.peak * (1.0 + tf.cos(3.141592653589793 * progress))
        return tf.where(step < warmup, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_fraction": self.warmup_fraction}


def make_optimizer(learning_rate: float, total_steps: int, weight_decay: float = 1e-4, warmup_fraction: float = 0.1):
    """AdamW (betas 0.9, 0.999) with warm-up + cosine decay."""
    schedule = WarmupCosine(learning_rate, total_steps, warmup_fraction)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay, beta_1=0.9, beta_2=0.999)
