"""CP-Mobile (Schmid et al.; seed 000 Fig. 1) in its simplified DCASE 2024 Task 1 baseline form.

Input stem: two 3x3 stride-2 conv-BN-ReLU layers. Blocks: pointwise expansion, depthwise 3x3
(carrying the block's stride), pointwise projection, each followed by BN (ReLU after the first
two); a residual add when the block keeps its shape. Optional Global Response Normalization
after the depthwise convolution (``grn=True``). Classifier: 1x1 conv to the classes, BN,
global average pooling, softmax.

Layout is (batch, time, freq, channels) as everywhere in keras_mtl, so a (freq, time) stride
of the reference implementation appears here as (time, freq).
"""

from __future__ import annotations

import dataclasses

from keras_mtl.core.backend import in_tflite_trace, keras, onednn_enabled, tf
from keras_mtl.core.errors import ConfigError


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor``, never more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclasses.dataclass(frozen=True)
class CPMobileConfig:
    """Defaults: the DCASE 2024 Task 1 baseline (61,148 params, 29.4M MACs on 256 mels x 65 frames)."""

    n_mels: int = 256
    base_channels: int = 32
    channel_multiplier: float = 1.8
    expansion_rate: float = 2.1
    blocks_per_stage: tuple = (3, 2, 1)
    # per block index (1-based): stride (time, freq) of its depthwise conv
    strides: dict = dataclasses.field(default_factory=lambda: {3: (2, 1), 4: (1, 2)})
    grn: bool = False

    def stage_channels(self) -> list[int]:
        return [
            make_divisible(self.base_channels * self.channel_multiplier**i) for i in range(len(self.blocks_per_stage))
        ]


@keras.utils.register_keras_serializable(package="keras_mtl")
class GlobalResponseNorm(keras.layers.Layer):
    """GRN (ConvNeXt V2): x + gamma * (x * N(x)) + beta, N = L2 over time/freq, divided by its channel mean."""

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="zeros")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        super().build(input_shape)

    def call(self, x):
        norm = tf.sqrt(tf.reduce_sum(tf.square(x), axis=[1, 2], keepdims=True) + 1e-6)
        scaled = norm / (tf.reduce_mean(norm, axis=-1, keepdims=True) + 1e-6)
        return x + self.gamma * (x * scaled) + self.beta


@keras.utils.register_keras_serializable(package="keras_mtl")
class AnyStrideDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """DepthwiseConv2D whose (time, freq) strides may differ, on every CPU.

    TensorFlow's own CPU kernel (used when oneDNN is off: TF_ENABLE_ONEDNN_OPTS=0, or by default on
    AVX2-only CPUs) takes equal strides only. There the layer convolves with stride 1 and keeps the
    rows and columns the strided convolution centres on: the same outputs, more work. With oneDNN, and
    when traced for TFLite (whose DEPTHWISE_CONV_2D takes any strides), it is the strided op itself.
    Input and output: (batch, time, freq, channels).
    """

    def call(self, inputs):
        stride_t, stride_f = self.strides
        if stride_t == stride_f or onednn_enabled() or in_tflite_trace():
            return super().call(inputs)
        y = tf.nn.depthwise_conv2d(
            inputs, self.depthwise_kernel, (1, 1, 1, 1), self.padding.upper(), dilations=self.dilation_rate
        )
        if self.use_bias:
            y = tf.nn.bias_add(y, self.bias)
        for axis, (stride, kernel) in enumerate(zip(self.strides, self.kernel_size), start=1):
            if stride == 1:
                continue
            size = inputs.shape[axis] if inputs.shape[axis] is not None else tf.shape(inputs)[axis]
            if self.padding == "same":
                out = (size + stride - 1) // stride
                pad_before = tf.maximum((out - 1) * stride + kernel - size, 0) // 2
                offset = (kernel - 1) // 2 - pad_before
            else:
                out, offset = (size - kernel) // stride + 1, 0
            index = [slice(None)] * 4
            index[axis] = slice(offset, offset + (out - 1) * stride + 1, stride)
            y = y[tuple(index)]
        return self.activation(y) if self.activation is not None else y


def _conv_bn(x, name: str, filters: int | None, kernel: int, stride=(1, 1), depthwise=False, relu=True):
    if depthwise:
        x = AnyStrideDepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}/conv")(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}/conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}/bn")(x)
    return keras.layers.ReLU(name=f"{name}/relu")(x) if relu else x


def cp_mobile_encoder(x, config: CPMobileConfig, prefix: str = "shared"):
    """Stem + blocks on a (batch, time, freq, 1) tensor; returns (batch, time', freq', channels)."""
    x = _conv_bn(x, f"{prefix}/in_c0", make_divisible(config.base_channels / 4), 3, stride=(2, 2))
    x = _conv_bn(x, f"{prefix}/in_c1", config.base_channels, 3, stride=(2, 2))
    channels_in = config.base_channels
    index = 0
    for stage, (count, channels) in enumerate(zip(config.blocks_per_stage, config.stage_channels())):
        for _ in range(count):
            index += 1
            name = f"{prefix}/b{index}"
            stride = tuple(config.strides.get(index, (1, 1)))
            expanded = make_divisible(channels_in * config.expansion_rate)
            y = _conv_bn(x, f"{name}/expand", expanded, 1)
            y = _conv_bn(y, f"{name}/depthwise", None, 3, stride=stride, depthwise=True)
            if config.grn:
                y = GlobalResponseNorm(name=f"{name}/grn")(y)
            y = _conv_bn(y, f"{name}/project", channels, 1, relu=False)
            if channels == channels_in and stride == (1, 1):
                y = keras.layers.Add(name=f"{name}/residual")([x, y])
            x = keras.layers.ReLU(name=f"{name}/relu")(y)
            channels_in = channels
    return x


def build_cp_mobile(n_classes: int = 10, config: CPMobileConfig | None = None, task_name: str = "asc") -> keras.Model:
    """CP-Mobile classifier: input ``mel`` (batch, time, n_mels) -> {task_name: class probabilities}."""
    config = config or CPMobileConfig()
    if n_classes < 2:
        raise ConfigError("CP-Mobile needs at least two classes")
    mel = keras.Input(shape=(None, config.n_mels), name="mel")
    x = keras.layers.Reshape((-1, config.n_mels, 1), name="shared/expand")(mel)
    x = cp_mobile_encoder(x, config)
    x = keras.layers.Conv2D(n_classes, 1, use_bias=False, name=f"{task_name}/classifier_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{task_name}/classifier_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name=f"{task_name}/pool")(x)
    out = keras.layers.Softmax(name=f"{task_name}/softmax")(x)
    return keras.Model(mel, {task_name: out}, name="cp_mobile")
