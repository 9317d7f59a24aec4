"""The encoder as a step model with per-layer state (kws_streaming, Rybakov et al., Interspeech 2020).

One invocation takes ``step_frames`` new log-mel frames (the encoder's total time stride: 4 frames,
40 ms, for the default model) and returns the embeddings they complete, one per branch. Each layer
that looks back in time keeps the frames it still needs as an explicit state input/output pair,
``state_<k>`` -> ``new_state_<k>`` (the caller feeds each new state back at the next step):

    convolution     (kernel - 1) * dilation input frames; the time padding becomes a delay
    pooling         non-overlapping in time; when the frames reaching it are not aligned with its
                    groups (a convolution before it delayed them), a delay of the missing frames

Memory therefore does not depend on the length of the audio: the arena holds one step's
activations, the states a few frames per layer. Explicit state rather than TFLite-Micro resource
variables: the same model runs in LiteRT (host checks) and TFLite-Micro, and the states of the
default encoder are 4.4 kB, copied once per 40 ms step.

Each branch's embeddings come out ``lag`` steps late (the look-ahead of the "same" padding,
plus the pooling delays). The step computes outputs for frames before the start of the stream,
which are not zero where the whole-clip network pads with zeros; the runner
(``streaming.StreamingRunner.encoder_steps``) and the firmware set the state rows that hold them to
zero after each step, so the embeddings equal the whole-clip network's from the first one up to float
rounding — in encoders where such outputs reach the next layer only through its state (the default,
board and tiny presets; test). Where a convolution unpooled in time feeds another (seed001's first
blocks) they reach it within the step, and the first embeddings can differ; ``warmup`` bounds how
many at either end (the receptive radius over the time stride). The last ones differ as well: past
the clip's end the step runs on pad frames.

With causal convolutions (``model.causal``: a ZeroPadding2D of the span before each convolution in
time, none after) no layer lags, no frame before the stream is computed, and every embedding equals
the whole-clip network's, at both ends of a clip too (``warmup`` 0).

Layers the step understands: 1-D, 2-D, depthwise and separable convolutions with time stride 1
(any padding and dilation; frequency strides too; a ZeroPadding2D before one, with no time padding after), non-overlapping max and average pooling, and layers that act on each frame alone
(normalisation, batch norm, activations, dropout, reshapes keeping time first). Anything else
(a recurrent or attention layer, a residual join) raises ConfigError naming the layer.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError

#: layers that act on every frame alone and keep the time axis: reused as they are
FRAMEWISE = (
    keras.layers.Normalization,
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.Activation,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.Identity,
)
CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
POOLINGS = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
)


@dataclasses.dataclass(frozen=True)
class StepState:
    """One state buffer: ``frames`` frames of the input of ``layer`` (shape without the batch)."""

    name: str  # input name; the output is "new_<name>"
    layer: str
    kind: str  # "convolution" or "delay"
    shape: tuple
    lag: int = 0  # the frames entering it at step s are the clip's frames [s * n - lag, (s + 1) * n - lag)
    stride: int = 1  # log-mel frames per frame at its layer's input

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass
class EncoderStep:
    """The step model and what its caller needs: outputs named like ``branches`` with ``/`` -> ``_``."""

    model: keras.Model
    step_frames: int
    states: list[StepState]
    lags: dict[str, int]  # branch -> embeddings it outputs before the first one of the stream
    warmup: int  # at most this many embeddings at either end of a clip differ from the whole-clip network's


@keras.utils.register_keras_serializable(package="keras_mtl")
class FrequencyZeroPadding(keras.layers.Layer):
    """Zeros before and after the frequency axis of a (1, time, freq, channels) tensor, as one
    concatenation with constant zeros: TFLite-Micro's PAD kernel took ~20 instructions per byte on a
    Cortex-M4 (QEMU count), a CONCATENATION copies whole rows. ``padding``: (before, after)."""

    def __init__(self, padding, **kwargs):
        super().__init__(**kwargs)
        self.padding = tuple(int(p) for p in padding)

    def call(self, x):
        _, frames, _, channels = x.shape
        parts = [x]
        if self.padding[0]:
            parts.insert(0, tf.zeros((1, frames, self.padding[0], channels), x.dtype))
        if self.padding[1]:
            parts.append(tf.zeros((1, frames, self.padding[1], channels), x.dtype))
        return tf.concat(parts, axis=2)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:2], input_shape[2] + sum(self.padding), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}


@keras.utils.register_keras_serializable(package="keras_mtl")
class StepNormalization(keras.layers.Layer):
    """A feature-axis Normalization for a step of fixed shape: (x - mean) * (1 / std) with constants
    of the step's whole shape, so that TFLite-Micro's SUB and MUL run elementwise (their broadcasting
    path took ~150 instructions per value on a Cortex-M4, QEMU count)."""

    def __init__(self, mean, inverse_std, **kwargs):
        super().__init__(**kwargs)
        self.mean = np.asarray(mean, np.float32)
        self.inverse_std = np.asarray(inverse_std, np.float32)

    def call(self, x):
        shape = (1, *x.shape[1:])
        mean = tf.constant(np.broadcast_to(self.mean, shape).copy())
        inverse_std = tf.constant(np.broadcast_to(self.inverse_std, shape).copy())
        return (x - mean) * inverse_std

    def get_config(self):
        return {**super().get_config(), "mean": self.mean.tolist(), "inverse_std": self.inverse_std.tolist()}


def _step_normalization(layer, name: str) -> StepNormalization:
    """The step form of a trained keras.layers.Normalization (same arithmetic, within float rounding)."""
    mean = np.asarray(layer.mean, np.float32).reshape(-1)
    variance = np.asarray(layer.variance, np.float32).reshape(-1)
    std = np.maximum(np.sqrt(variance), keras.backend.epsilon())  # as keras.layers.Normalization
    return StepNormalization(mean, 1.0 / std, name=f"{name}_step")


def _inbound(layer_config: dict) -> list[str]:
    """Names of the layers feeding a layer (tf_keras functional config: one node per call)."""
    nodes = layer_config.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise ConfigError(f"{layer_config['name']}: a layer called more than once; the encoder cannot be stepped")
    if not nodes:
        return []
    return [entry[0] for entry in nodes[0]]  # [layer name, node index, tensor index, kwargs] per input


def _time_slice(x, start: int, stop_from_end: int):
    """Frames [start, T - stop_from_end) of a (1, T, ...) tensor, as a cropping layer (a STRIDED_SLICE)."""
    if len(x.shape) == 3:
        return keras.layers.Cropping1D((start, stop_from_end))(x)
    if len(x.shape) == 4:
        return keras.layers.Cropping2D(((start, stop_from_end), (0, 0)))(x)
    raise ConfigError(f"a state of rank {len(x.shape)}: only (time, features) and (time, freq, channels) step")


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's "same" padding (before, after) of one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _live_columns(size: int, kernel: int, stride: int, dilation: int, pad: tuple) -> tuple:
    """((first, stop) of the frequency taps of a "same"-padded convolution that reach the input at some
    output position, the padding (before, after) those taps need): taps that only ever multiply the
    padding's zeros are left out of the step model (the deepest blocks of a small model, e.g. one mel
    position padded to three: two thirds of that convolution's MACs). Same outputs; fewer MACs."""
    outputs = -(-size // stride)
    live = [
        tap for tap in range(kernel) if any(0 <= o * stride - pad[0] + tap * dilation < size for o in range(outputs))
    ]
    if dilation != 1 or not live:
        return (0, kernel), pad
    first, stop = live[0], live[-1] + 1
    before = pad[0] - first
    after = (outputs - 1) * stride + (stop - first) - size - before
    return (first, stop), (before, max(after, 0))


def build_encoder_step(network: keras.Model, branches: list[str], step_frames: int, radius: int) -> EncoderStep:
    """The step form of the layers from ``network``'s input to its ``branches`` (frames layers).

    ``step_frames``: log-mel frames per step, a multiple of every time pooling on the way;
    ``radius``: the trunk's receptive radius in input frames (for ``warmup``). Shares the trained
    weights. Raises ConfigError for a layer it cannot step (module docstring)."""
    config = network.get_config()
    by_name = {entry["name"]: entry for entry in config["layers"]}
    needed, todo = set(), list(branches)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo.extend(_inbound(by_name[name]))
    order = [entry["name"] for entry in config["layers"] if entry["name"] in needed]

    n_mels = int(network.input.shape[-1])
    mel = keras.Input(shape=(step_frames, n_mels), batch_size=1, name="mel")
    tensors, lags, paddings = {}, {}, {}
    state_inputs, state_outputs, states = [], [], []

    def add_state(x, frames: int, layer: str, kind: str, lag: int, stride: int):
        shape = (frames, *(int(d) for d in x.shape[2:]))
        state = keras.Input(shape=shape, batch_size=1, name=f"state_{len(states)}")
        states.append(StepState(f"state_{len(states)}", layer, kind, shape, lag, stride))
        buffer = keras.layers.Concatenate(axis=1, name=f"{layer.replace('/', '_')}_{kind}_buffer")([state, x])
        new_state = _time_slice(buffer, int(x.shape[1]), 0)
        state_inputs.append(state)
        state_outputs.append(keras.layers.Identity(name=f"new_state_{len(states) - 1}")(new_state))
        return buffer

    for name in order:
        layer = network.get_layer(name)
        if isinstance(layer, keras.layers.InputLayer):
            tensors[name], lags[name] = mel, 0
            continue
        sources = _inbound(by_name[name])
        if len(sources) != 1:
            raise ConfigError(
                f"{name}: a {type(layer).__name__} joining {len(sources)} inputs; the encoder cannot be stepped"
            )
        x, lag = tensors[sources[0]], lags[sources[0]]
        frames = int(x.shape[1])
        padded = paddings.get(sources[0])  # ((time before, after), (freq before, after)) of a ZeroPadding2D
        if padded is not None and not isinstance(layer, CONVOLUTIONS):
            raise ConfigError(f"{sources[0]}: a ZeroPadding2D the encoder can step only before a convolution")
        if isinstance(layer, keras.layers.ZeroPadding2D):
            (time_before, time_after), freq_pad = layer.padding
            if time_after:
                raise ConfigError(f"{name}: padding after the clip in time cannot be stepped (only before it)")
            tensors[name], lags[name], paddings[name] = x, lag, ((time_before, 0), tuple(freq_pad))
            continue
        if isinstance(layer, CONVOLUTIONS):
            settings = layer.get_config()
            kernel, stride, dilation = settings["kernel_size"], settings["strides"], settings["dilation_rate"]
            if stride[0] != 1:
                raise ConfigError(f"{name}: a time stride of {stride[0]}; the encoder steps convolutions of stride 1")
            span = (kernel[0] - 1) * dilation[0]
            if settings["padding"] not in ("same", "valid"):
                raise ConfigError(f"{name}: {settings['padding']} padding cannot be stepped")
            if settings["padding"] == "same":
                if padded is not None:
                    raise ConfigError(f"{name}: a ZeroPadding2D before a convolution with same padding")
                before = _same_padding(frames, kernel[0], 1, dilation[0])[0]
            else:  # frames before the clip padded by the ZeroPadding2D, if any: causal when it is the span
                before = padded[0][0] if padded is not None else 0
                if before > span:
                    raise ConfigError(
                        f"{name}: {before} frames of time padding before a convolution that spans {span}; "
                        "the encoder steps at most the span"
                    )
            if span:
                x = add_state(x, span, name, "convolution", lag, step_frames // frames)
            weights, columns = layer.get_weights(), None
            if (settings["padding"] == "same" or padded is not None) and len(kernel) == 2:
                if padded is not None:
                    pad = tuple(int(p) for p in padded[1])
                else:
                    pad = _same_padding(int(x.shape[2]), kernel[1], stride[1], dilation[1])
                if type(layer) is keras.layers.Conv2D:
                    columns, pad = _live_columns(int(x.shape[2]), kernel[1], stride[1], dilation[1], pad)
                if any(pad):
                    x = FrequencyZeroPadding(pad, name=f"{name}_freq_padding")(x)
            if columns is not None and columns != (0, kernel[1]):  # frequency taps that only ever see padding
                settings = {**settings, "kernel_size": (kernel[0], columns[1] - columns[0])}
                weights = [weights[0][:, columns[0] : columns[1]], *weights[1:]]
            clone = type(layer).from_config({**settings, "padding": "valid", "name": f"{name}_step"})
            x = clone(x)
            clone.set_weights(weights)
            tensors[name], lags[name] = x, lag + span - before
        elif isinstance(layer, POOLINGS):
            settings = layer.get_config()
            pool, stride = settings["pool_size"][0], (settings["strides"] or settings["pool_size"])[0]
            if pool != stride:
                raise ConfigError(f"{name}: overlapping time pooling ({pool} with stride {stride}) cannot be stepped")
            missing = (-lag) % pool
            if missing:
                buffer = add_state(x, missing, name, "delay", lag, step_frames // frames)
                x = _time_slice(buffer, 0, missing)
                lag += missing
            if frames % pool:
                raise ConfigError(f"{name}: {frames} frames per step do not fill time pools of {pool}")
            tensors[name], lags[name] = layer(x), lag // pool
        elif isinstance(layer, keras.layers.Normalization) and not layer.invert and tuple(layer.axis) in ((-1,), (2,)):
            tensors[name], lags[name] = _step_normalization(layer, name)(x), lag
        elif isinstance(layer, FRAMEWISE) or (
            isinstance(layer, keras.layers.Reshape) and tuple(layer.target_shape)[:1] == (-1,)
        ):
            tensors[name], lags[name] = layer(x), lag
        else:
            raise ConfigError(f"{name}: a {type(layer).__name__} layer; the encoder cannot be stepped through it")

    outputs = [keras.layers.Identity(name=branch.replace("/", "_"))(tensors[branch]) for branch in branches]
    model = keras.Model([mel, *state_inputs], [*outputs, *state_outputs], name="encoder_step")
    stride = step_frames // int(tensors[branches[0]].shape[1]) if branches else step_frames
    # no lag anywhere (causal convolutions, aligned pools): no frame before the stream is ever
    # computed, every state holds exactly the whole-clip network's zero padding, nothing to warm up
    exact = not any(lags.values())
    return EncoderStep(
        model,
        step_frames,
        states,
        {branch: lags[branch] for branch in branches},
        warmup=0 if exact else -(-radius // stride),
    )
