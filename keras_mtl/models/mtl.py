"""Multi-task model builder (seed 000, Fig. 4c): shared CNN encoder, one decoder per task.

The encoder is fully convolutional in time, so 1 s ASC clips and 10 s SED clips go through
the same layers; it maps log-mel frames (time, n_mels) to per-frame embeddings. Clip tasks
get temporal attention pooling + a linear classifier, frame tasks a GRU + per-frame sigmoid.
The first ``shared_blocks`` conv blocks are shared (``shared/...``); later blocks, if any,
are copied per task (``asc/conv5``) -- the knob of hierarchical MTL.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.models import trees


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Encoder and decoder sizes. ``pools`` are (time, freq) max-pooling factors per block.

    ``freq_strides``: per block, the convolution's stride along the mel axis (default 1; the time
    stride is always 1, time is reduced by pooling so that the encoder streams step by step).
    ``separable``: blocks after the first are depthwise-separable convolutions (a k x k depthwise
    convolution then a 1 x 1 pointwise one; MobileNet, Howard et al. 2017) -- about k^2 times
    fewer MACs than a full convolution when the channel counts are large.
    ``causal``: the convolutions look only at the current and past frames (zero padding of
    ``kernel_size - 1`` frames before the clip, none after; as kws_streaming's causal padding,
    Rybakov et al. 2020). The stepped encoder then has no look-ahead and no lag, and its embeddings
    equal the whole-clip network's at every frame, the clip's first and last ones included; with
    "same" padding (the default) they differ within the receptive radius of either end.
    """

    n_mels: int = 128
    channels: tuple = (16, 32, 48, 64, 64)
    pools: tuple = ((2, 4), (2, 4), (1, 2), (1, 2), (1, 2))
    freq_strides: tuple | None = None
    separable: bool = False
    kernel_size: int = 3
    dropout: float = 0.1
    shared_blocks: int | None = None
    gru_units: int = 64
    bidirectional: bool = False
    head_dropout: float = 0.2
    bn_momentum: float = 0.9
    causal: bool = False
    weak_output: bool = False  # frame tasks also output attention-pooled clip scores ("<task>_weak")
    # after the shared blocks, groups of tasks may share more blocks: [{"tasks": [gc, ac], "blocks": 2}, ...]
    share_groups: tuple = ()
    # or any hierarchy: a tree spec of keras_mtl.models.trees ({"tasks", "shared", "children"}), root = shared/
    tree: dict | None = None

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "pools", tuple(tuple(int(v) for v in p) for p in self.pools))
        if len(self.channels) != len(self.pools):
            raise ConfigError(f"model: {len(self.channels)} channel counts but {len(self.pools)} pool sizes")
        strides = (1,) * len(self.channels) if self.freq_strides is None else tuple(int(v) for v in self.freq_strides)
        if len(strides) != len(self.channels) or min(strides) < 1:
            raise ConfigError(
                f"model: freq_strides needs {len(self.channels)} positive integers, got {self.freq_strides}"
            )
        object.__setattr__(self, "freq_strides", strides)
        if self.shared_blocks is not None and not 0 <= self.shared_blocks <= len(self.channels):
            raise ConfigError(f"model: shared_blocks must be between 0 and {len(self.channels)}")
        groups = []
        seen = set()
        for group in self.share_groups or ():
            names = tuple(str(t) for t in (group["tasks"] if isinstance(group, dict) else group[0]))
            depth = int(group["blocks"] if isinstance(group, dict) else group[1])
            if seen & set(names):
                raise ConfigError(f"model: task(s) {', '.join(sorted(seen & set(names)))} in two share groups")
            if depth < 0 or self.n_shared + depth > len(self.channels):
                raise ConfigError(f"model: share group {'-'.join(names)} asks for more blocks than the encoder has")
            seen |= set(names)
            groups.append((names, depth))
        object.__setattr__(self, "share_groups", tuple(groups))
        if self.tree is not None:
            if self.shared_blocks is not None or self.share_groups:
                raise ConfigError("model: give a tree or shared_blocks/share_groups, not both")
            trees.validate_tree(self.tree, len(self.channels))
        if self.n_mels % self.freq_pool_factor:
            raise ConfigError(
                f"model: n_mels {self.n_mels} is not divisible by the frequency pooling {self.freq_pool_factor}"
            )

    @property
    def time_pool_factor(self) -> int:
        return math.prod(p[0] for p in self.pools)

    @property
    def freq_pool_factor(self) -> int:
        """How many mel bands one output band spans: the frequency pools times the frequency strides."""
        return math.prod(p[1] for p in self.pools) * math.prod(self.freq_strides)

    @property
    def n_shared(self) -> int:
        if self.tree is not None:
            return int(self.tree["shared"])
        return len(self.channels) if self.shared_blocks is None else self.shared_blocks

    def output_frames(self, input_frames: int) -> int:
        return input_frames // self.time_pool_factor


@keras.utils.register_keras_serializable(package="keras_mtl")
class TemporalAttentionPooling(keras.layers.Layer):
    """Attention pooling over time: softmax_t(w . h_t + b) weighted sum of the frames h_t."""

    def build(self, input_shape):
        self.score_kernel = self.add_weight(
            name="score_kernel", shape=(int(input_shape[-1]), 1), initializer="glorot_uniform"
        )
        self.score_bias = self.add_weight(name="score_bias", shape=(1,), initializer="zeros")
        super().build(input_shape)

    def call(self, frames):
        scores = tf.tensordot(frames, self.score_kernel, axes=1) + self.score_bias  # (B, T, 1)
        weights = tf.nn.softmax(scores, axis=1)
        # T * mean rather than sum: equal in float, and TFLite-Micro's int8 SUM kernel disagrees
        # with TFLite's by up to ~100 LSB while MEAN agrees exactly (measured, tflite-micro 2026-10)
        steps = tf.cast(tf.shape(frames)[1], frames.dtype)
        return tf.reduce_mean(weights * frames, axis=1) * steps

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


def conv_block(x, prefix: str, index: int, channels: int, pool, config: ModelConfig):
    """Convolution (3 x 3, or depthwise-separable after the first block when ``config.separable``),
    batch norm, ReLU, max pooling, dropout; layers named ``{prefix}/conv{index}`` etc. With
    ``config.causal`` the convolution's padding is a ``{prefix}/pad{index}`` layer before it: the
    frames before the clip in time, "same" in frequency."""
    strides = (1, config.freq_strides[index - 1])
    padding = "same"
    if config.causal:
        freq = int(x.shape[2])
        out = -(-freq // strides[1])
        total = max((out - 1) * strides[1] + config.kernel_size - freq, 0)
        x = keras.layers.ZeroPadding2D(
            ((config.kernel_size - 1, 0), (total // 2, total - total // 2)), name=f"{prefix}/pad{index}"
        )(x)
        padding = "valid"
    if config.separable and index > 1:
        conv = keras.layers.SeparableConv2D(
            channels, config.kernel_size, strides=strides, padding=padding, use_bias=False, name=f"{prefix}/conv{index}"
        )
    else:
        conv = keras.layers.Conv2D(
            channels, config.kernel_size, strides=strides, padding=padding, use_bias=False, name=f"{prefix}/conv{index}"
        )
    x = conv(x)
    x = keras.layers.BatchNormalization(momentum=config.bn_momentum, name=f"{prefix}/bn{index}")(x)
    x = keras.layers.ReLU(name=f"{prefix}/relu{index}")(x)
    if tuple(pool) != (1, 1):
        x = keras.layers.MaxPooling2D(pool_size=tuple(pool), name=f"{prefix}/pool{index}")(x)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, name=f"{prefix}/dropout{index}")(x)
    return x


def to_frames(x, prefix: str, config: ModelConfig):
    freq = config.n_mels // config.freq_pool_factor
    return keras.layers.Reshape((-1, freq * config.channels[-1]), name=f"{prefix}/frames")(x)


def _clip_head(frames, task, config: ModelConfig):
    x = TemporalAttentionPooling(name=f"{task.name}/attention")(frames)
    if config.head_dropout:
        x = keras.layers.Dropout(config.head_dropout, name=f"{task.name}/dropout")(x)
    return keras.layers.Dense(task.n_classes, activation="softmax", name=f"{task.name}/classifier")(x)


@keras.utils.register_keras_serializable(package="keras_mtl")
class WeakAttentionPooling(keras.layers.Layer):
    """Clip-level scores from frame scores: per class, a softmax-over-time weighted sum (DCASE task 4 baseline)."""

    def call(self, inputs):
        strong, attention_logits = inputs
        weights = tf.nn.softmax(attention_logits, axis=1)
        return tf.reduce_sum(strong * weights, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], input_shape[0][-1])


def _frame_head(frames, task, config: ModelConfig):
    gru = keras.layers.GRU(config.gru_units, return_sequences=True, name=f"{task.name}/gru")
    if config.bidirectional:
        x = keras.layers.Bidirectional(gru, name=f"{task.name}/bigru")(frames)
    else:
        x = gru(frames)
    if config.head_dropout:
        x = keras.layers.Dropout(config.head_dropout, name=f"{task.name}/dropout")(x)
    strong = keras.layers.Dense(task.n_classes, activation="sigmoid", name=f"{task.name}/classifier")(x)
    if not config.weak_output:
        return strong
    attention = keras.layers.Dense(task.n_classes, name=f"{task.name}/weak_attention")(x)
    return strong, WeakAttentionPooling(name=f"{task.name}/weak")([strong, attention])


HEADS = {"clip": _clip_head, "frame": _frame_head}


def build_model(tasks: Sequence, config: ModelConfig, feature_mean=None, feature_var=None) -> keras.Model:
    """Functional model: input ``mel`` (batch, time, n_mels) -> {task name: prediction}.

    ``feature_mean``/``feature_var`` (per mel band, from the training set) initialise the
    input normalisation; without them it is the identity.
    """
    if not tasks:
        raise ConfigError("build_model needs at least one task")
    mean = np.zeros(config.n_mels, np.float32) if feature_mean is None else np.asarray(feature_mean, np.float32)
    var = np.ones(config.n_mels, np.float32) if feature_var is None else np.asarray(feature_var, np.float32)
    mel = keras.Input(shape=(None, config.n_mels), name="mel")
    x = keras.layers.Normalization(axis=-1, mean=mean, variance=var, name="shared/input_norm")(mel)
    x = keras.layers.Reshape((-1, config.n_mels, 1), name="shared/expand")(x)
    blocks = list(zip(config.channels, config.pools))
    built = {}  # (prefix, block index) -> tensor; a prefix owns the blocks its tasks share
    frames_of = {}
    outputs = {}
    for task in tasks:
        if task.level not in HEADS:
            raise ConfigError(f"task {task.name}: no decoder for level {task.level!r}")
        y, prefix = x, "shared"
        for i, (channels, pool) in enumerate(blocks, start=1):
            prefix = block_owner(config, task.name, i)
            if (prefix, i) not in built:
                built[(prefix, i)] = conv_block(y, prefix, i, channels, pool, config)
            y = built[(prefix, i)]
        if prefix not in frames_of:
            frames_of[prefix] = to_frames(y, prefix, config)
        add_head_outputs(outputs, task, HEADS[task.level](frames_of[prefix], task, config))
    return keras.Model(mel, outputs, name="mtl_" + "_".join(t.name for t in tasks))


def add_head_outputs(outputs: dict, task, prediction) -> None:
    """Put a decoder's output(s) into the model's output dict: a frame head with a weak
    (clip-level) output gives (strong, weak), stored as ``task`` and ``task_weak``."""
    if isinstance(prediction, tuple):
        outputs[task.name], outputs[f"{task.name}_weak"] = prediction
    else:
        outputs[task.name] = prediction


def block_owner(config: ModelConfig, task_name: str, index: int) -> str:
    """Name prefix of conv block ``index`` (1-based) on ``task_name``'s path: 'shared', a share
    group or tree node ('gc-ac') or the task itself."""
    if config.tree is not None:
        owners = trees.block_owners(config.tree)
        if task_name not in owners:
            raise ConfigError(f"model: task {task_name} is not in the tree ({', '.join(owners)})")
        return owners[task_name][index - 1]
    if index <= config.n_shared:
        return "shared"
    for names, depth in config.share_groups:
        if task_name in names and index <= config.n_shared + depth:
            return "-".join(names)
    return task_name


def task_submodel(model: keras.Model, task_name: str) -> keras.Model:
    """The path of ``model`` that predicts one task (shares its layers and weights)."""
    return keras.Model(model.input, model.output[task_name], name=f"{task_name}_path")


def shared_layers(model: keras.Model) -> list:
    return [layer for layer in model.layers if layer.name.startswith("shared/")]
