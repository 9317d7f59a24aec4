"""The MTL-VAE's training strategy (seed 002): each head's loss on its own items of the SED task's
semi-supervised batches, L = 2 * BCE_strong + BCE_weak + MSE_reconstruction + beta * KLD
(the network and the loss terms' details: keras_mtl.models.vae)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.models.vae import LATENT_LOG_VAR, LATENT_MEAN, RECONSTRUCTION, RECONSTRUCTION_TARGET, kl_divergence
from keras_mtl.training.losses import bce
from keras_mtl.training.strategies import STRONG, STRONG_REAL, UNLABELED, WEAK, MultiTaskStrategy, StrategyOptions


@dataclasses.dataclass(frozen=True)
class VAEOptions(StrategyOptions):
    """MTL-VAE: ``strong_weight`` of the strong BCE, ``kl_weight`` (beta) of the KL term after a linear
    warm-up over ``kl_warmup_steps`` optimizer steps. There is no teacher: mean-teacher fields are unused."""

    strong_weight: float = 2.0
    kl_weight: float = 1.0
    kl_warmup_steps: int = 0


class MTLVAE(MultiTaskStrategy):
    """Trains the MTL-VAE on a frame task's semi-supervised batches (see the module docstring)."""

    distils = False  # its own loss (reconstruction, KL, strong/weak BCE): no distillation term

    Options = VAEOptions
    architecture_only = True

    def __init__(self, network: keras.Model, tasks: Sequence, options: VAEOptions | None = None, **kwargs):
        super().__init__(network, tasks, options, **kwargs)
        # the batches' roles are handled here: no mean teacher
        if self.mean_teacher_tasks or self.teacher is not None:
            raise ConfigError("the mtl-vae strategy has no mean teacher")
        if len(self.tasks) != 1:
            raise ConfigError("the mtl-vae strategy trains one frame-level task")
        self.task = self.tasks[0]
        self.strong_weight = float(self.options.strong_weight)
        self.kl_weight, self.kl_warmup_steps = float(self.options.kl_weight), int(self.options.kl_warmup_steps)
        self.variational = f"{self.task.name}_{LATENT_LOG_VAR}" in network.output
        self.term_trackers = {
            name: keras.metrics.Mean(name=f"{self.task.name}_{name}")
            for name in ("strong_bce", "weak_bce", "reconstruction_mse", "kld")
        }

    @classmethod
    def options_from(cls, config, total_steps: int, mean_teacher_tasks=()) -> VAEOptions:
        tc = config.training
        return VAEOptions(
            loss_weights=config.task_loss_weights(),
            kl_weight=tc.kl_weight,
            kl_warmup_steps=int(round(tc.kl_warmup_fraction * total_steps)),
        )

    @property
    def metrics(self):
        return super().metrics + list(self.term_trackers.values())

    def beta(self):
        """The KL weight at the current step (linear warm-up)."""
        if self.kl_warmup_steps <= 0:
            return tf.constant(self.kl_weight)
        progress = tf.cast(self.optimizer.iterations, tf.float32) / float(self.kl_warmup_steps)
        return self.kl_weight * tf.minimum(1.0, progress)

    def loss_terms(self, outputs: dict, targets) -> dict:
        """Each head's loss on its own items: strong BCE (roles 0 and 3), weak BCE (role 1),
        reconstruction MSE (role 2), KLD (all items); an absent role contributes 0."""
        name = self.task.name
        if isinstance(targets, dict):
            role = targets["role"]
            strong_targets, weak_targets = targets["strong"], targets["weak"]
        else:  # plain strong batches (validation, or no weak/unlabelled data)
            role = tf.fill(tf.shape(targets)[:1], STRONG)
            strong_targets, weak_targets = targets, tf.reduce_max(targets, axis=1)
        strong_rows = tf.logical_or(tf.equal(role, STRONG), tf.equal(role, STRONG_REAL))
        terms = {
            "strong_bce": bce(
                tf.boolean_mask(strong_targets, strong_rows), tf.boolean_mask(outputs[name], strong_rows)
            ),
            "weak_bce": bce(
                tf.boolean_mask(weak_targets, tf.equal(role, WEAK)),
                tf.boolean_mask(outputs[f"{name}_weak"], tf.equal(role, WEAK)),
            ),
        }
        unlabeled = tf.equal(role, UNLABELED)
        reconstruction = tf.boolean_mask(outputs[f"{name}_{RECONSTRUCTION}"], unlabeled)
        target = tf.boolean_mask(outputs[f"{name}_{RECONSTRUCTION_TARGET}"], unlabeled)
        frames = tf.minimum(tf.shape(reconstruction)[1], tf.shape(target)[1])
        squared = tf.square(reconstruction[:, :frames] - tf.stop_gradient(target[:, :frames]))
        terms["reconstruction_mse"] = tf.math.divide_no_nan(
            tf.reduce_sum(squared), tf.cast(tf.size(squared), tf.float32)
        )
        if self.variational:  # per latent dimension: averaged over its elements like the other terms
            mean = outputs[f"{name}_{LATENT_MEAN}"]
            terms["kld"] = kl_divergence(mean, outputs[f"{name}_{LATENT_LOG_VAR}"]) / tf.cast(
                tf.shape(mean)[-1], tf.float32
            )
        else:
            terms["kld"] = tf.constant(0.0)
        terms["strong_rows"] = strong_rows
        terms["strong_targets"] = strong_targets
        return terms

    def total_loss(self, terms: dict):
        return (
            self.strong_weight * terms["strong_bce"]
            + terms["weak_bce"]
            + terms["reconstruction_mse"]
            + self.beta() * terms["kld"]
        )

    def train_step(self, data):
        features, targets = data[self.task.name]
        with tf.GradientTape() as tape:
            outputs = self.network(features, training=True)
            terms = self.loss_terms(outputs, targets)
            total = self.total_loss(terms) + self.regularization()
        self.apply(tape, total, self.optimized_variables())
        return self._record_terms(total, terms, outputs)

    def test_step(self, data):
        features, targets = data[self.task.name]
        outputs = self.network(features, training=False)
        terms = self.loss_terms(outputs, targets)
        return self._record_terms(self.total_loss(terms), terms, outputs)

    def _record_terms(self, total, terms, outputs):
        for key, tracker in self.term_trackers.items():
            tracker.update_state(terms[key])
        self.total_tracker.update_state(total)
        rows = terms["strong_rows"]
        self._record_task(
            self.task.name,
            terms["strong_bce"],
            tf.boolean_mask(terms["strong_targets"], rows),
            tf.boolean_mask(outputs[self.task.name], rows),
        )
        return {m.name: m.result() for m in self.metrics}
