"""Multi-task VAE for sound event detection (seed 002): a recurrent variational encoder with one
posterior shared by every data type, decoders with shared weights, and three heads.

    mel -> input norm -> conv blocks -> encoder GRU -> mean, log variance -> z (sampled in training,
    the mean at inference) -> decoder GRU -> strong head (frame sigmoid), weak head (attention-pooled
    clip scores), reconstruction head (the normalised log-mel, averaged over each output frame)

Training (``MTLVAE``, the strategy in keras_mtl.training.vae) takes the semi-supervised batches of the SED task: synthetic
strongly labelled clips (role 0), weakly labelled clips (1), unlabelled clips (2) and strongly
labelled real clips (3). Each head's loss sees only its own items:

    L = 2 * BCE_strong (roles 0, 3) + BCE_weak (role 1) + MSE_reconstruction (role 2) + beta * KLD

with KLD the closed-form KL(N(mean, var) || N(0, I)) averaged over latent dimensions, frames and
items (every term is a mean over its elements; summed over the 32 latent dimensions, the KL term
outweighs the frame-averaged BCE and the posterior collapses: at 4 epochs on the built-in data the
strong head then predicted no event at all), and beta ramped linearly from 0 over ``kl_warmup_fraction`` of the steps
(0: beta = 1 from the start). ``variational=False`` gives the deterministic encoder of seed 002's
Fig. 3 (z = mean, no KL term). Which data types take part is set by the batch sizes
(training.strong_batch_size, weak_batch_size, unlabeled_batch_size, strong_real_batch_size).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.models import mtl as models

RECONSTRUCTION, RECONSTRUCTION_TARGET, LATENT_MEAN, LATENT_LOG_VAR = (
    "reconstruction",
    "reconstruction_target",
    "latent_mean",
    "latent_log_var",
)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Sizes of the MTL-VAE. ``pools``: (time, freq) max pooling per conv block."""

    n_mels: int = 128
    channels: tuple = (16, 32, 64)
    pools: tuple = ((2, 4), (2, 4), (1, 4))
    kernel_size: int = 3
    dropout: float = 0.1
    bn_momentum: float = 0.9
    encoder_units: int = 64
    latent_dim: int = 32
    decoder_units: int = 64
    variational: bool = True
    weak_output: bool = True  # the weak head (the registry passes it; always built)

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "pools", tuple(tuple(int(v) for v in p) for p in self.pools))
        if len(self.channels) != len(self.pools):
            raise ConfigError(f"mtl-vae: {len(self.channels)} channel counts but {len(self.pools)} pool sizes")
        if min(self.encoder_units, self.latent_dim, self.decoder_units) < 1:
            raise ConfigError("mtl-vae: encoder_units, latent_dim and decoder_units must be positive")
        if self.n_mels % self.freq_pool_factor:
            raise ConfigError(
                f"mtl-vae: n_mels {self.n_mels} is not divisible by the frequency pooling {self.freq_pool_factor}"
            )

    @property
    def time_pool_factor(self) -> int:
        return int(np.prod([p[0] for p in self.pools]))

    @property
    def freq_pool_factor(self) -> int:
        return int(np.prod([p[1] for p in self.pools]))


@keras.utils.register_keras_serializable(package="keras_mtl")
class Sampling(keras.layers.Layer):
    """z = mean + exp(log_var / 2) * eps, eps ~ N(0, I), in training; z = mean at inference (and
    always when not ``variational``)."""

    def __init__(self, variational: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.variational = bool(variational)

    def call(self, inputs, training=None):
        mean, log_var = inputs
        if not self.variational:
            return mean
        if training is None:
            training = keras.backend.learning_phase()

        def sample():
            return mean + tf.exp(0.5 * log_var) * tf.random.normal(tf.shape(mean))

        return tf.__internal__.smart_cond.smart_cond(training, sample, lambda: tf.identity(mean))

    def get_config(self):
        return {**super().get_config(), "variational": self.variational}


def kl_divergence(mean, log_var):
    """KL(N(mean, exp(log_var)) || N(0, I)) summed over the last axis, averaged over the rest."""
    per_dim = -0.5 * (1.0 + log_var - tf.square(mean) - tf.exp(log_var))
    return tf.reduce_mean(tf.reduce_sum(per_dim, axis=-1))


def build_mtl_vae(tasks: Sequence, config: VAEConfig, feature_mean=None, feature_var=None) -> keras.Model:
    """Functional MTL-VAE for one frame task: outputs ``{task, task_weak, task_reconstruction,
    task_reconstruction_target, task_latent_mean, task_latent_log_var}``."""
    if len(tasks) != 1 or tasks[0].level != "frame":
        raise ConfigError("mtl-vae detects sound events: it takes exactly one frame-level task (e.g. --task-set sed)")
    task = tasks[0]
    mean = np.zeros(config.n_mels, np.float32) if feature_mean is None else np.asarray(feature_mean, np.float32)
    var = np.ones(config.n_mels, np.float32) if feature_var is None else np.asarray(feature_var, np.float32)
    mel = keras.Input(shape=(None, config.n_mels), name="mel")
    normalised = keras.layers.Normalization(axis=-1, mean=mean, variance=var, name="shared/input_norm")(mel)
    x = keras.layers.Reshape((-1, config.n_mels, 1), name="shared/expand")(normalised)
    block_config = models.ModelConfig(
        n_mels=config.n_mels,
        channels=config.channels,
        pools=config.pools,
        kernel_size=config.kernel_size,
        dropout=config.dropout,
        bn_momentum=config.bn_momentum,
    )
    for i, (channels, pool) in enumerate(zip(config.channels, config.pools), start=1):
        x = models.conv_block(x, "shared", i, channels, pool, block_config)
    frames = models.to_frames(x, "shared", block_config)
    h = keras.layers.GRU(config.encoder_units, return_sequences=True, name="shared/encoder_gru")(frames)
    z_mean = keras.layers.Dense(config.latent_dim, name="shared/latent_mean")(h)
    outputs = {f"{task.name}_{LATENT_MEAN}": z_mean}
    if config.variational:
        z_log_var = keras.layers.Dense(config.latent_dim, name="shared/latent_log_var")(h)
        outputs[f"{task.name}_{LATENT_LOG_VAR}"] = z_log_var
        z = Sampling(True, name="shared/sampling")([z_mean, z_log_var])
    else:
        z = z_mean
    d = keras.layers.GRU(config.decoder_units, return_sequences=True, name="shared/decoder_gru")(z)
    strong = keras.layers.Dense(task.n_classes, activation="sigmoid", name=f"{task.name}/classifier")(d)
    attention = keras.layers.Dense(task.n_classes, name=f"{task.name}/weak_attention")(d)
    outputs[task.name] = strong
    outputs[f"{task.name}_weak"] = models.WeakAttentionPooling(name=f"{task.name}/weak")([strong, attention])
    outputs[f"{task.name}_{RECONSTRUCTION}"] = keras.layers.Dense(config.n_mels, name=f"{task.name}/reconstruction")(d)
    factor = config.time_pool_factor
    target = keras.layers.AveragePooling1D(factor, name=f"{task.name}/reconstruction_target")(normalised)
    outputs[f"{task.name}_{RECONSTRUCTION_TARGET}"] = target
    return keras.Model(mel, outputs, name=f"mtl_vae_{task.name}")
