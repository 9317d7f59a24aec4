"""Trainable parameters and multiply-accumulates (MACs) per second of audio, per layer.

Shapes come from running the functional graph once on 1 s of features. Counting follows
the DCASE / NeSsi convention (see shared/reference): convolution MACs = in/groups * out *
k_h * k_w * out_h * out_w; BatchNorm = 2 * C params and 2 * C MACs; dense = in * out per
position; GRU = 3 * (in + units) * units per step (x2 when bidirectional); attention
pooling = 2 * T * D; activations, pooling and reshapes cost nothing; input normalisation
counts one MAC per value.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_mtl.core.backend import keras, tf
from keras_mtl.features.logmel import FrontEndConfig


@dataclasses.dataclass
class LayerProfile:
    name: str
    kind: str
    output_shape: tuple
    params: int
    macs: int
    input_elements: int = 0  # all inputs together, batch 1
    int8_weight_bytes: int = 0


def _int8_weight_bytes(layer) -> int:
    """Bytes of the layer's weights after int8 conversion: kernels 1 byte per value, biases int32.

    BatchNormalization folds into the preceding convolution's kernel and bias, so it costs
    nothing here; a convolution without bias gains an int32 bias per output channel from it.
    """
    if isinstance(layer, keras.layers.BatchNormalization) or not layer.weights:
        return 0
    if isinstance(layer, keras.layers.SeparableConv2D):  # converts to DEPTHWISE_CONV_2D + CONV_2D
        depthwise, pointwise = (int(np.prod(w.shape)) for w in layer.weights[:2])
        return depthwise + pointwise + 4 * (int(layer.weights[0].shape[-2]) * layer.depth_multiplier + layer.filters)
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
        kernel = int(np.prod(layer.weights[0].shape))
        out_channels = int(layer.weights[0].shape[-1]) * (
            int(layer.weights[0].shape[-2]) if isinstance(layer, keras.layers.DepthwiseConv2D) else 1
        )
        return kernel + 4 * out_channels
    return int(sum(np.prod(w.shape) for w in layer.trainable_weights))


def _trainable_params(layer) -> int:
    return int(sum(np.prod(w.shape) for w in layer.trainable_weights))


def _layer_macs(layer, in_shape, out_shape) -> int:
    kind = type(layer).__name__
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return int(np.prod(out_shape[1:]) * kh * kw)
    if isinstance(layer, keras.layers.SeparableConv2D):  # depthwise k x k, then pointwise 1 x 1
        kh, kw = layer.kernel_size
        positions = int(np.prod(out_shape[1:-1]))
        depth = int(in_shape[-1]) * layer.depth_multiplier
        return positions * depth * (kh * kw + int(out_shape[-1]))
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        groups = getattr(layer, "groups", 1)
        return int(np.prod(out_shape[1:]) * kh * kw * in_shape[-1] // groups)
    if isinstance(layer, keras.layers.Conv1D):
        return int(np.prod(out_shape[1:]) * layer.kernel_size[0] * in_shape[-1] // getattr(layer, "groups", 1))
    if isinstance(layer, keras.layers.Dense):
        return int(np.prod(out_shape[1:-1]) * in_shape[-1] * out_shape[-1])
    if isinstance(layer, keras.layers.BatchNormalization):
        return 2 * int(in_shape[-1])
    if isinstance(layer, keras.layers.Normalization):
        return int(np.prod(in_shape[1:]))
    if isinstance(layer, keras.layers.Bidirectional):
        return 2 * _layer_macs(layer.forward_layer, in_shape, (*out_shape[:-1], out_shape[-1] // 2))
    if isinstance(layer, (keras.layers.GRU, keras.layers.LSTM, keras.layers.SimpleRNN)):
        gates = {"GRU": 3, "LSTM": 4}.get(kind, 1)
        units = layer.units
        steps = in_shape[1]
        return int(steps * gates * (in_shape[-1] + units) * units)
    if kind == "TemporalAttentionPooling":
        return int(2 * in_shape[1] * in_shape[-1])
    return 0


def profile(model: keras.Model, frontend: FrontEndConfig | None = None, seconds: float = 1.0) -> list[LayerProfile]:
    """Per-layer params and MACs of ``model`` for ``seconds`` of audio."""
    frontend = frontend or FrontEndConfig()
    frames = frontend.n_frames(int(round(seconds * frontend.sample_rate)))
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    n_mels = model.input_shape[-1]
    outputs = probe(tf.zeros((1, frames, n_mels)), training=False)
    shapes = {layer.name: tuple(out.shape) for layer, out in zip(layers, outputs)}
    shapes[model.input.name] = (1, frames, n_mels)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            shapes[layer.name] = (1, frames, n_mels)
    result = []
    for layer in layers:
        inbound = layer.inbound_nodes[0].inbound_layers
        source = inbound[0] if isinstance(inbound, (list, tuple)) else inbound
        in_shape = shapes[source.name]
        out_shape = shapes[layer.name]
        sources = inbound if isinstance(inbound, (list, tuple)) else [inbound]
        input_elements = int(sum(np.prod(shapes[src.name][1:]) for src in sources))
        result.append(
            LayerProfile(
                layer.name,
                type(layer).__name__,
                out_shape[1:],
                _trainable_params(layer),
                _layer_macs(layer, in_shape, out_shape),
                input_elements,
                _int8_weight_bytes(layer),
            )
        )
    return result


def activation_bytes(layers: list[LayerProfile], bytes_per_value: int = 1) -> int:
    """Peak activation memory estimate: the largest (inputs + output) of any one layer, int8 by default."""
    return max((l.input_elements + int(np.prod(l.output_shape))) * bytes_per_value for l in layers) if layers else 0


def summarize(layers: list[LayerProfile], task_names=()) -> dict:
    """Totals, the shared part, and each task's own part (its head and unshared blocks)."""
    total = {
        "params": sum(l.params for l in layers),
        "macs_per_second": sum(l.macs for l in layers),
        "int8_weight_bytes": sum(l.int8_weight_bytes for l in layers),
        "int8_activation_bytes": activation_bytes(layers),
    }
    parts = {}
    for prefix in ("shared", *task_names):
        own = [l for l in layers if l.name.split("/")[0] == prefix]
        parts[prefix] = {"params": sum(l.params for l in own), "macs_per_second": sum(l.macs for l in own)}
    per_task = {}
    for name in task_names:
        per_task[name] = {
            "params": parts["shared"]["params"] + parts[name]["params"],
            "macs_per_second": parts["shared"]["macs_per_second"] + parts[name]["macs_per_second"],
        }
    return {"total": total, "parts": parts, "task_paths": per_task}


def format_table(layers: list[LayerProfile]) -> str:
    rows = [("layer", "type", "output (1 s)", "params", "MACs / 1 s")]
    rows += [(l.name, l.kind, "x".join(str(d) for d in l.output_shape), f"{l.params:,}", f"{l.macs:,}") for l in layers]
    rows.append(("total", "", "", f"{sum(l.params for l in layers):,}", f"{sum(l.macs for l in layers):,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if k == 0 or k == len(rows) - 2:
            lines.append("-" * (sum(widths) + 8))
    return "\n".join(lines)
