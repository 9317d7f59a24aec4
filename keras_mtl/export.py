"""From a trained run to int8 TFLite models that TFLite-Micro runs, in a streaming form.

TFLite-Micro has no GRU op and does not finish WHILE loops, and an unrolled GRU copies the graph
once per frame, so the network is cut into pieces with static shapes and batch 1:

    encoder          log-mel window (1, W, n_mels) -> per-frame embeddings of every encoder branch:
                     one second of frames (100) plus C frames of context on each side, C covering the
                     encoder's receptive field, so the embeddings of the middle second (cropped in
                     the model) equal those of the whole-clip network; windows start 100 frames apart
    <task>_head      clip task: embeddings of a clip's windows (1, k * frames per window, F) -> class scores
    <task>_step      frame task: one embedding (1, F) and the GRU state (1, U) -> event scores and new state
                     (the MTL-VAE: encoder GRU -> latent mean -> decoder GRU, both states in one vector)

The device runs the encoder once per second of audio, each clip head on the last k windows, and
each frame task's step model once per output frame, feeding the state back; flash and arena do
not depend on clip length. Networks without an attention head for a clip task (CP-Mobile, the
Georgiev DNN) export that task's whole path over one clip instead.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from keras_mtl import agreement
from keras_mtl.backend import keras, tf
from keras_mtl.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Piece:
    """One exported model: its Keras form, what feeds it, and its role on the device."""

    name: str
    model: keras.Model
    kind: str  # "encoder", "clip_head", "frame_step" or "clip_model"
    task: str | None = None
    branch: str | None = None  # the encoder output (frames layer) a head reads
    windows: int = 1  # clip heads / clip models: encoder windows per clip
    traced: Callable | None = dataclasses.field(default=None, repr=False)  # see keras_call


@dataclasses.dataclass
class StreamingPlan:
    """How the device cuts audio: windows of ``window_frames`` log-mel frames every ``hop_frames``."""

    window_frames: int
    hop_frames: int
    context_frames: int  # log-mel frames of context on each side of the second a window covers
    output_frames: int  # embeddings per window
    pad_value: np.ndarray  # log-mel frame used beyond the ends of a clip (the input normalisation mean)
    branches: list[str]  # encoder outputs, in order (frames layer names)
    pieces: list[Piece]

    def piece(self, name: str) -> Piece:
        return next(p for p in self.pieces if p.name == name)


def _frames_layer_of(network: keras.Model, task) -> str | None:
    """Name of the layer whose output the task's decoder reads, or None if it has no known decoder."""
    names = {layer.name for layer in network.layers}
    head = f"{task.name}/attention" if task.level == "clip" else recurrent_path(network, task.name)[0]
    if head in names:
        return network.get_layer(head)._inbound_nodes[0].inbound_layers.name
    if task.level == "clip":
        return None
    if f"{task.name}/bigru" in names:
        raise ConfigError(f"task {task.name}: a bidirectional GRU cannot run frame by frame on a device; "
                          "train with model.bidirectional: false to export it")
    raise ConfigError(f"task {task.name}: no {head} layer to export as a streaming step")


def plan_streaming(network: keras.Model, tasks, frontend, time_pool_factor: int) -> StreamingPlan:
    """Cut ``network`` into an encoder, clip heads and frame steps (see the module docstring)."""
    hop_frames = int(round(1.0 / frontend.frame_seconds))  # one second of frames
    if hop_frames % time_pool_factor:
        raise ConfigError(f"one second ({hop_frames} frames) is not a multiple of the model's time pooling "
                          f"({time_pool_factor}); the encoder cannot be run window by window")
    n_mels = int(network.input.shape[-1])
    branches: list[str] = []
    heads = {}
    for task in tasks:
        branch = _frames_layer_of(network, task)
        heads[task.name] = branch
        if branch is not None and branch not in branches:
            branches.append(branch)
    trunk = keras.Model(network.input, [network.get_layer(b).output for b in branches]) if branches else None
    radius = receptive_radius(trunk) if trunk is not None else 0
    context = -(-radius // time_pool_factor) * time_pool_factor
    window = hop_frames + 2 * context
    output_frames = hop_frames // time_pool_factor
    crop = context // time_pool_factor
    try:
        pad_value = np.asarray(network.get_layer("shared/input_norm").get_weights()[0], np.float32).reshape(-1)
    except (ValueError, IndexError):
        pad_value = np.zeros(n_mels, np.float32)

    pieces = []
    if branches:
        mel = keras.Input(shape=(window, n_mels), batch_size=1, name="mel")
        outputs = trunk(mel)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        named = [keras.layers.Cropping1D((crop, crop), name=b.replace("/", "_"))(o) for b, o in zip(branches, outputs)]
        pieces.append(Piece("encoder", keras.Model(mel, named, name="encoder"), "encoder"))
    for task in tasks:
        branch = heads[task.name]
        windows = max(1, int(round(task.clip_seconds)))
        if branch is None:
            frames = frontend.n_frames(int(round(task.clip_seconds * frontend.sample_rate)))
            mel = keras.Input(shape=(frames, n_mels), batch_size=1, name="mel")
            path = keras.Model(network.input, network.output[task.name])
            pieces.append(Piece(f"{task.name}_model", keras.Model(mel, path(mel), name=f"{task.name}_model"),
                                "clip_model", task.name, windows=windows))
            continue
        width = int(network.get_layer(branch).output.shape[-1])
        if task.level == "clip":
            pieces.append(Piece(f"{task.name}_head", clip_head(network, task.name, windows * output_frames, width),
                                "clip_head", task.name, branch, windows))
        else:
            pieces.append(Piece(f"{task.name}_step", frame_step(network, task.name, width), "frame_step", task.name, branch))
    return StreamingPlan(window, hop_frames, context, output_frames, pad_value, branches, pieces)


def receptive_radius(model: keras.Model) -> int:
    """Input frames on each side that can reach an output frame: convolutions add
    (kernel // 2) * dilation and poolings (pool - 1), times the stride accumulated before them
    (an upper bound for branching models; time is axis 1)."""
    radius, stride = 0, 1
    for layer in _layers_in_order(model):
        config = layer.get_config()
        if "kernel_size" in config:
            kernel, step = config["kernel_size"][0], config["strides"][0]
            dilation = config.get("dilation_rate", (1,))[0]
            radius += (kernel // 2) * dilation * stride
            stride *= step
        elif "pool_size" in config:
            pool, step = config["pool_size"][0], (config.get("strides") or config["pool_size"])[0]
            radius += (pool - 1) * stride
            stride *= step
    return radius


def _layers_in_order(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers_in_order(layer)
        else:
            yield layer


def clip_head(network: keras.Model, task: str, frames: int, width: int) -> keras.Model:
    """Attention pooling + classifier over ``frames`` embeddings (the trained layers, shared weights)."""
    x = inputs = keras.Input(shape=(frames, width), batch_size=1, name="frames")
    x = network.get_layer(f"{task}/attention")(x)
    x = network.get_layer(f"{task}/classifier")(x)
    return keras.Model(inputs, x, name=f"{task}_head")


def recurrent_path(network: keras.Model, task: str) -> list[str]:
    """The layers between a frame task's embeddings and its classifier: ``<task>/gru``, or for the
    MTL-VAE the encoder GRU, the latent mean (the inference path: no sampling) and the decoder GRU."""
    names = {layer.name for layer in network.layers}
    if f"{task}/gru" not in names and "shared/encoder_gru" in names:
        return ["shared/encoder_gru", "shared/latent_mean", "shared/decoder_gru"]
    return [f"{task}/gru"]


def frame_step(network: keras.Model, task: str, width: int) -> keras.Model:
    """One step of the task's recurrent path + classifier, with the recurrent state as explicit input
    and output (the states of several GRUs side by side in one vector, in path order)."""
    layers = [network.get_layer(name) for name in recurrent_path(network, task)]
    grus = [layer for layer in layers if isinstance(layer, keras.layers.GRU)]
    frame = keras.Input(shape=(width,), batch_size=1, name="frame")
    state = keras.Input(shape=(sum(g.units for g in grus),), batch_size=1, name="state")
    x, offset, new_states = frame, 0, []
    for layer in layers:
        if isinstance(layer, keras.layers.GRU):
            h = state if len(grus) == 1 else state[:, offset:offset + layer.units]
            x = _gru_step(layer, x, h)
            offset += layer.units
            new_states.append(x)
        else:
            x = layer(x)
    if len(new_states) == 1:
        new_state = keras.layers.Identity(name="new_state")(new_states[0])
    else:
        new_state = keras.layers.Concatenate(name="new_state")(new_states)
    scores = network.get_layer(f"{task}/classifier")(x)
    scores = keras.layers.Identity(name="scores")(scores)
    return keras.Model([frame, state], [scores, new_state], name=f"{task}_step")


def _gru_step(gru, x, state):
    """One step of a Keras GRU (reset_after) as dense layers: z = sig(x Wz + bz + h Uz + cz),
    r = sig(x Wr + br + h Ur + cr), n = tanh(x Wn + bn + r * (h Un + cn)), h' = n + z * (h - n)."""
    if not (gru.reset_after and gru.use_bias and gru.recurrent_activation.__name__ == "sigmoid"
            and gru.activation.__name__ == "tanh"):
        raise ConfigError(f"{gru.name}: only the default GRU (reset_after, sigmoid/tanh, bias) can be exported")
    kernel, recurrent, bias = gru.get_weights()
    units = gru.units
    gates = {}
    for index, gate in enumerate(("z", "r", "n")):
        cols = slice(index * units, (index + 1) * units)
        x_part = keras.layers.Dense(units, name=f"{gru.name}_x{gate}")
        h_part = keras.layers.Dense(units, name=f"{gru.name}_h{gate}")
        gates[gate] = (x_part(x), h_part(state))
        x_part.set_weights([kernel[:, cols], bias[0, cols]])
        h_part.set_weights([recurrent[:, cols], bias[1, cols]])
    z = keras.layers.Activation("sigmoid", name=f"{gru.name}_z")(keras.layers.Add()(list(gates["z"])))
    r = keras.layers.Activation("sigmoid", name=f"{gru.name}_r")(keras.layers.Add()(list(gates["r"])))
    n = keras.layers.Activation("tanh", name=f"{gru.name}_n")(
        keras.layers.Add()([gates["n"][0], keras.layers.Multiply()([r, gates["n"][1]])]))
    return keras.layers.Add()([n, keras.layers.Multiply()([z, keras.layers.Subtract()([state, n])])])


# -- conversion ------------------------------------------------------------------------------------

def convert_int8(model: keras.Model, representative: Callable[[], Iterable[dict[str, np.ndarray]]]) -> bytes:
    """Full-integer post-training quantisation: int8 weights, activations, inputs and outputs."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # samples by input name: a list would be matched to the inputs in the converter's own order
    converter.representative_dataset = lambda: ({name: np.asarray(x, np.float32) for name, x in sample.items()}
                                                for sample in representative())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    # one weight scale per FULLY_CONNECTED: the CMSIS-NN FULLY_CONNECTED of the firmware's pinned
    # TFLite-Micro tree (2023) applies the first channel's scale to every channel of a per-channel FC
    # and computes wrong outputs (measured: up to 9 LSB); convolutions keep per-channel scales
    converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    return converter.convert()


def operators(flatbuffer: bytes) -> list[str]:
    """Builtin operator names used by a .tflite model."""
    from tflite_micro.python.tflite_micro import runtime

    model = runtime.convert_bytearray_to_object(bytearray(flatbuffer))
    names = {value: name for name, value in vars(runtime.schema_fb.BuiltinOperator).items() if not name.startswith("_")}
    return sorted({names.get(runtime.get_builtin_code_from_operator_code(code), "?") for code in model.operatorCodes})


class Int8Model:
    """A quantised model run by LiteRT ("litert"; "litert-reference": its reference kernels, no
    XNNPACK) or TFLite-Micro ("tflm"), with inputs and outputs by name (the Keras names, from the
    model's signature) and float in/out conversion."""

    def __init__(self, flatbuffer: bytes, runtime_name: str = "litert", arena_size: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.flatbuffer = flatbuffer
        self.runtime = runtime_name
        litert = Interpreter(model_content=flatbuffer)
        litert.allocate_tensors()
        signature = litert._get_full_signature_list()["serving_default"]
        names_in = {index: name for name, index in signature["inputs"].items()}
        names_out = {index: name for name, index in signature["outputs"].items()}
        # subgraph order, the order TFLite-Micro numbers its inputs and outputs in
        self.inputs = [dict(d, key=names_in[d["index"]]) for d in litert.get_input_details()]
        self.outputs = [dict(d, key=names_out[d["index"]]) for d in litert.get_output_details()]
        if runtime_name == "litert":
            self.interpreter = litert
        elif runtime_name == "litert-reference":
            self.interpreter = agreement.reference_interpreter(flatbuffer)
        elif runtime_name == "tflm":
            from tflite_micro.python.tflite_micro import runtime

            self.interpreter = runtime.Interpreter.from_bytes(flatbuffer, arena_size=arena_size)
        else:
            raise ValueError(f"unknown runtime {runtime_name!r}")

    def input_names(self) -> list[str]:
        return [d["key"] for d in self.inputs]

    def output_names(self) -> list[str]:
        return [d["key"] for d in self.outputs]

    def run_int8(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for position, detail in enumerate(self.inputs):
            value = np.asarray(inputs[detail["key"]], np.int8).reshape(detail["shape"])
            if self.runtime != "tflm":
                self.interpreter.set_tensor(detail["index"], value)
            else:
                self.interpreter.set_input(value, position)
        self.interpreter.invoke()
        if self.runtime != "tflm":
            return {d["key"]: self.interpreter.get_tensor(d["index"]).copy() for d in self.outputs}
        return {d["key"]: np.array(self.interpreter.get_output(i)) for i, d in enumerate(self.outputs)}

    def input_quantization(self, name: str) -> tuple[float, int]:
        return _scale_zero(next(d for d in self.inputs if d["key"] == name))

    def output_quantization(self, name: str) -> tuple[float, int]:
        return _scale_zero(next(d for d in self.outputs if d["key"] == name))

    def quantize(self, name: str, value: np.ndarray) -> np.ndarray:
        return quantize(value, *self.input_quantization(name))

    def dequantize(self, name: str, value: np.ndarray) -> np.ndarray:
        scale, zero = self.output_quantization(name)
        return (value.astype(np.float32) - zero) * scale

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float in, float out: quantise the inputs, invoke, dequantise the outputs."""
        raw = self.run_int8({name: self.quantize(name, value) for name, value in inputs.items()})
        return {name: self.dequantize(name, value) for name, value in raw.items()}


def quantize(value: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(np.asarray(value, np.float32) / scale) + zero_point, -128, 127).astype(np.int8)


def _scale_zero(detail: dict) -> tuple[float, int]:
    scale, zero = detail["quantization"]
    return float(scale), int(zero)


def minimum_arena(flatbuffer: bytes, sample_inputs: dict[str, np.ndarray], upper: int | None = None) -> int:
    """Smallest TFLite-Micro arena (bytes, multiple of 16) with which the model allocates and runs."""
    def works(size: int) -> bool:
        try:
            model = Int8Model(flatbuffer, "tflm", arena_size=size)
            model.run_int8(sample_inputs)
            return True
        except RuntimeError:  # TFLite-Micro reports a too-small arena as a failed allocation
            return False

    high = upper or max(16 * 1024, 4 * len(flatbuffer))
    with agreement.quiet_native_stderr():
        return _search_arena(works, high)


def _search_arena(works, high: int) -> int:
    while not works(high):
        high *= 2
        if high > 64 * 1024 * 1024:
            raise RuntimeError("TFLite-Micro could not allocate this model with 64 MiB of arena")
    low = 0
    while high - low > 16:
        middle = (low + high) // 2 // 16 * 16
        if middle <= low:
            break
        if works(middle):
            high = middle
        else:
            low = middle
    return high


def windows_of(features: np.ndarray, plan: StreamingPlan) -> list[np.ndarray]:
    """The encoder windows of a clip's log-mel frames: window k covers frames
    [k * hop - context, (k + 1) * hop + context), padded with ``plan.pad_value`` beyond the clip."""
    count = max(1, math.ceil((features.shape[0] - 1) / plan.hop_frames))
    pad = np.broadcast_to(plan.pad_value, (plan.context_frames, features.shape[1]))
    tail = count * plan.hop_frames + plan.context_frames - features.shape[0]
    padded = np.concatenate([pad, features, np.broadcast_to(plan.pad_value, (max(0, tail), features.shape[1]))])
    return [padded[k * plan.hop_frames: k * plan.hop_frames + plan.window_frames].astype(np.float32)
            for k in range(count)]


# -- the streaming pipeline, run the way the device runs it ----------------------------------------

class StreamingRunner:
    """Runs a clip through the pieces of a plan: encoder per window, clip heads on a clip's windows,
    frame steps frame by frame with the state fed back. ``call(piece, inputs)`` runs one piece
    (float Keras or an int8 interpreter) on float inputs and returns float outputs by name."""

    def __init__(self, plan: StreamingPlan, call: Callable[[Piece, dict], dict]):
        self.plan = plan
        self.call = call

    def embeddings(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """{branch: (frames, F)} for a whole clip, window by window."""
        encoder = self.plan.piece("encoder")
        per_branch = {b: [] for b in self.plan.branches}
        for window in windows_of(features, self.plan):
            out = self.call(encoder, {"mel": window[None]})
            for branch in self.plan.branches:
                per_branch[branch].append(out[branch.replace("/", "_")][0])
        return {b: np.concatenate(v) for b, v in per_branch.items()}

    def predict(self, piece: Piece, features: np.ndarray, embeddings: dict | None = None) -> np.ndarray:
        if piece.kind == "clip_model":
            return self.call(piece, {"mel": features[None]})[piece.model.output_names[0]][0]
        frames = (embeddings or self.embeddings(features))[piece.branch]
        if piece.kind == "clip_head":
            frames = fit_frames(frames, piece.model.inputs[0].shape[1])
            return self.call(piece, {"frames": frames[None]})[piece.model.output_names[0]][0]
        state = np.zeros((1, piece.model.inputs[1].shape[-1]), np.float32)
        scores = []
        for frame in frames:
            out = self.call(piece, {"frame": frame[None], "state": state})
            state = out["new_state"]
            scores.append(out["scores"][0])
        return np.stack(scores)


def keras_call(piece: Piece, inputs: dict) -> dict:
    """Run a piece's float Keras model (traced once: eager calls cost ~1 ms each, and a clip's
    frame steps make hundreds)."""
    if piece.traced is None:
        piece.traced = tf.function(lambda x, model=piece.model: model(x, training=False))
    function = piece.traced
    ordered = [np.asarray(inputs[name], np.float32) for name in piece.model.input_names]
    outputs = function(ordered if len(ordered) > 1 else ordered[0])
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {name: np.asarray(value) for name, value in zip(piece.model.output_names, outputs)}


def int8_call(models: dict[str, Int8Model]) -> Callable[[Piece, dict], dict]:
    def call(piece: Piece, inputs: dict) -> dict:
        return models[piece.name].run(inputs)

    return call


# -- one command: run folder -> export folder ------------------------------------------------------

def load_run(run_dir: Path):
    """A finished run's configuration, tasks, trained network and streaming plan."""
    import yaml

    from keras_mtl import architectures, training
    from keras_mtl import config as run_config
    from keras_mtl.tasks import resolve_tasks

    for name in ("config.yaml", "model.keras"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir}: not a finished run folder ({name} is missing)")
    config = run_config.build(yaml.safe_load((run_dir / "config.yaml").read_text()))
    tasks = resolve_tasks(list(config.tasks), config.custom_tasks)
    network = architectures.load_network(run_dir / "model.keras")
    factor, _ = training.time_resolution(config)
    return config, tasks, network, plan_streaming(network, tasks, config.frontend, factor)


def export_run(run_dir: str | Path, out_dir: str | Path | None = None, calibration_clips: int = 64,
               verify_samples: int = 16, max_eval_clips: int | None = None, qat_epochs: int = 0) -> dict:
    """Quantise a run's network into streaming int8 models, verify them (TFLite-Micro vs LiteRT,
    float vs int8 metrics), measure arenas and write models, C arrays, settings header and
    ``export_report.json`` into ``out_dir`` (default ``<run>/export``).

    ``qat_epochs`` > 0: first export the trained network as it is (post-training quantisation, into
    ``out_dir/ptq``), then fine-tune it that many epochs with quantisation-aware training
    (keras_mtl.compression.qat_finetune) and export the result into ``out_dir``; the report holds
    both sets of metrics."""
    from keras_mtl import compression, fileio, training

    run_dir = Path(run_dir)
    config, tasks, network, plan = load_run(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "export"
    data = training.prepare_data(config, tasks)
    settings = dict(calibration_clips=calibration_clips, verify_samples=verify_samples, max_eval_clips=max_eval_clips)
    if qat_epochs <= 0:
        return _export_network(run_dir, config, tasks, network, plan, data, out, **settings)
    ptq = _export_network(run_dir, config, tasks, network, plan, data, out / "ptq", **settings)
    tuned = compression.qat_finetune(network, config, tasks, data, qat_epochs)
    factor, _ = training.time_resolution(config)
    report = _export_network(run_dir, config, tasks, tuned, plan_streaming(tuned, tasks, config.frontend, factor), data,
                             out, **settings)
    report["quantization"] = {
        "method": "qat", "epochs": qat_epochs, "ptq_export": str(out / "ptq"),
        "tasks": {task: {"headline": result["headline"],
                         "float": ptq["tasks"][task]["float"][result["headline"]],
                         "ptq_int8_streamed": ptq["tasks"][task]["int8_streamed"][result["headline"]],
                         "qat_float": result["float"][result["headline"]],
                         "qat_int8_streamed": result["int8_streamed"][result["headline"]]}
                  for task, result in report["tasks"].items()}}
    fileio.write_json(out / "export_report.json", {k: v for k, v in report.items() if k != "output_dir"})
    return report


def calibration_samples(plan: StreamingPlan, tasks, train: dict, clips: int, rng) -> dict[str, list[dict]]:
    """Inputs of every piece from up to ``clips`` training clips per task, run through the float
    pieces: encoder windows, clip-head embeddings and frame-step (embedding, state) pairs."""
    float_runner = StreamingRunner(plan, keras_call)
    calibration: dict[str, list[dict]] = {p.name: [] for p in plan.pieces}
    for task in tasks:
        split = train[task.name]
        picks = rng.choice(len(split), size=min(clips, len(split)), replace=False)
        for index in picks:
            features = split.load_features(int(index)).astype(np.float32)
            if "encoder" in calibration:
                calibration["encoder"].extend({"mel": w[None]} for w in windows_of(features, plan)[:2])
            for piece in plan.pieces:
                if piece.task != task.name:
                    continue
                if piece.kind == "clip_model":
                    calibration[piece.name].append({"mel": features[None]})
                    continue
                embeddings = float_runner.embeddings(features)[piece.branch]
                if piece.kind == "clip_head":
                    width = piece.model.inputs[0].shape[1]
                    calibration[piece.name].append({"frames": fit_frames(embeddings, width)[None]})
                elif len(calibration[piece.name]) < 40 * clips:
                    state = np.zeros((1, piece.model.inputs[1].shape[-1]), np.float32)
                    for frame in embeddings[:: max(1, len(embeddings) // 40)]:
                        calibration[piece.name].append({"frame": frame[None], "state": state})
                        state = keras_call(piece, {"frame": frame[None], "state": state})["new_state"]
    return calibration


def _export_network(run_dir: Path, config, tasks, network, plan: StreamingPlan, data, out: Path, calibration_clips: int,
                    verify_samples: int, max_eval_clips: int | None) -> dict:
    """export_run for one network: calibrate, convert, verify, evaluate, write ``out``."""
    from keras_mtl import c_arrays, fileio, profiling
    from keras_mtl.features import mel_weight_matrix

    rng = np.random.default_rng(config.seed)
    float_runner = StreamingRunner(plan, keras_call)

    calibration = calibration_samples(plan, tasks, data.train, calibration_clips, rng)

    report = {"run": str(run_dir), "streaming": {
        "window_frames": plan.window_frames, "hop_frames": plan.hop_frames, "context_frames": plan.context_frames,
        "embeddings_per_window": plan.output_frames}, "models": {}, "tasks": {}}
    int8_models, arenas = {}, {}
    c_dir = out / "c"
    for piece in plan.pieces:
        samples = calibration[piece.name]
        log.info("quantising %s (%d calibration samples)", piece.name, len(samples))
        flatbuffer = convert_int8(piece.model, lambda: iter(samples))
        with fileio.atomic_path(out / f"{piece.name}.tflite") as tmp:
            tmp.write_bytes(flatbuffer)
        litert = Int8Model(flatbuffer)
        checks = [samples[int(i)] for i in rng.choice(len(samples), size=min(verify_samples, len(samples)), replace=False)]
        int8_inputs = [{n: litert.quantize(n, v) for n, v in s.items()} for s in checks]
        arena = minimum_arena(flatbuffer, int8_inputs[0])
        micro = Int8Model(flatbuffer, "tflm", arena_size=arena)
        reference = Int8Model(flatbuffer, "litert-reference")
        end_to_end = agreement.end_to_end_lsb([reference.run_int8(i) for i in int8_inputs],
                                              [micro.run_int8(i) for i in int8_inputs])
        per_operator = agreement.per_operator_lsb(
            flatbuffer, [[i[name] for name in litert.input_names()] for i in int8_inputs], arena)
        int8_models[piece.name], arenas[piece.name] = litert, arena
        c_arrays.write_model_array(c_dir, piece.name, flatbuffer)
        report["models"][piece.name] = {
            "kind": piece.kind, "task": piece.task, "flatbuffer_bytes": len(flatbuffer), "tflm_arena_bytes": arena,
            "operators": operators(flatbuffer), "inputs": {n: list(map(int, d["shape"])) for n, d in
                                                             zip(litert.input_names(), litert.inputs)},
            "verified_inputs": len(int8_inputs),
            # each operator fed the same inputs: within the requantisation rounding difference (agreement.py)
            "tflm_vs_litert_per_operator_max_lsb": max(per_operator.values()),
            "tflm_vs_litert_per_operator_lsb": per_operator,
            # the whole model: rounding differences carried on and possibly grown by later operators
            "tflm_vs_litert_max_lsb": end_to_end}
        log.info("%s: %d bytes, arena %d bytes, TFLM vs LiteRT: per operator ≤ %d LSB, end to end %d LSB", piece.name,
                 len(flatbuffer), arena, max(per_operator.values()), end_to_end)

    int8_runner = StreamingRunner(plan, int8_call(int8_models))
    layers = profiling.profile(network, config.frontend)
    prof = profiling.summarize(layers, [t.name for t in tasks])
    for task in tasks:
        split = data.test[task.name]
        count = len(split) if max_eval_clips is None else min(len(split), max_eval_clips)
        items = split.items[:count]
        pieces = [p for p in plan.pieces if p.task == task.name]
        predictions = {"float": [], "float_streamed": [], "int8_streamed": []}
        path = keras.Model(network.input, network.output[task.name])
        for index in range(count):
            features = split.load_features(index).astype(np.float32)
            predictions["float"].append(np.asarray(path(features[None], training=False))[0])
            for key, runner in (("float_streamed", float_runner), ("int8_streamed", int8_runner)):
                predictions[key].append(runner.predict(pieces[0], features))
        scores = {key: task.evaluate(value, items, split.frame_seconds) for key, value in predictions.items()}
        headline = task.headline
        report["tasks"][task.name] = {
            "split": split.split, "clips": count, "headline": headline,
            **{key: _jsonable(value) for key, value in scores.items()},
            "int8_minus_float_points": 100.0 * ((scores["int8_streamed"][headline] or 0.0) - (scores["float"][headline] or 0.0)),
            "macs_per_second": prof["task_paths"][task.name]["macs_per_second"],
            "params": prof["task_paths"][task.name]["params"]}
        log.info("%s %s: float %.4f, float streamed %.4f, int8 streamed %.4f", task.name, headline,
                 scores["float"][headline] or 0.0, scores["float_streamed"][headline] or 0.0,
                 scores["int8_streamed"][headline] or 0.0)
    report["total"] = {"flatbuffer_bytes": sum(m["flatbuffer_bytes"] for m in report["models"].values()),
                       "tflm_arena_bytes_max": max(arenas.values()),
                       "macs_per_second": prof["total"]["macs_per_second"], "params": prof["total"]["params"]}
    fileio.write_text(c_dir / "model_settings.h", c_arrays.settings_header(
        config.frontend, mel_weight_matrix(config.frontend), plan, tasks, int8_models, arenas))
    embedding_ms = plan.hop_frames * config.frontend.hop_length * 1000 // (config.frontend.sample_rate * plan.output_frames)
    fileio.write_text(c_dir / "km_pieces.h", c_arrays.pieces_header(
        plan, tasks, int8_models, {name: m["operators"] for name, m in report["models"].items()}, embedding_ms))
    fileio.write_json(out / "export_report.json", report)
    report["output_dir"] = str(out)
    return report


def fit_frames(frames: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` frames, zero-padded at the end when there are fewer."""
    frames = frames[:width]
    if frames.shape[0] < width:
        frames = np.concatenate([frames, np.zeros((width - frames.shape[0], frames.shape[1]), frames.dtype)])
    return frames


def _jsonable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, type(None)))}
