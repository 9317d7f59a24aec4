"""The streaming form of a trained network: the pieces a device runs, with static shapes and batch 1.

TFLite-Micro has no GRU op and does not finish WHILE loops, and an unrolled GRU copies the graph
once per frame, so the network is cut into pieces with static shapes and batch 1:

    encoder          the default: a step model with per-layer state (keras_mtl.deploy.encoder_step):
                     (1, S, n_mels) new log-mel frames, S the encoder's time stride, and the states
                     -> one embedding per branch and the new states; its arena does not depend on the
                     audio's length. Encoders with a layer that cannot step (a residual join, CP-Mobile's
                     blocks) run by windows instead: log-mel window (1, W, n_mels) -> per-frame
                     embeddings of every branch, one second of frames (100) plus C frames of context on
                     each side, C covering the receptive field, so the embeddings of the middle second
                     (cropped in the model) equal those of the whole-clip network; windows 100 frames apart
    <task>_head      clip task: embeddings of a clip's windows (1, k * frames per window, F) -> class scores
    <task>_step      frame task: one embedding (1, F) and the GRU state (1, U) -> event scores and new state
                     (the MTL-VAE: encoder GRU -> latent mean -> decoder GRU, both states in one vector)

The device runs the encoder every S frames (by windows: once per second of audio), each clip head on the last k windows, and
each frame task's step model once per output frame, feeding the state back; flash and arena do
not depend on clip length. Networks without an attention head for a clip task (CP-Mobile, the
Georgiev DNN) export that task's whole path over one clip instead. Which pieces a network has is
the architecture's word (``keras_mtl.models.architectures``: each declares its tasks' ``TaskStream``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import numpy as np

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.deploy.encoder_step import EncoderStep, build_encoder_step
from keras_mtl.models.architectures import get_architecture
from keras_mtl.runs.network import check_streamable

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Piece:
    """One exported model: its Keras form, what feeds it, and its role on the device."""

    name: str
    model: keras.Model
    kind: str  # "encoder" (by windows), "encoder_step", "clip_head", "frame_step" or "clip_model"
    task: str | None = None
    branch: str | None = None  # the encoder output (frames layer) a head reads
    windows: int = 1  # clip heads / clip models: encoder windows per clip
    traced: Callable | None = dataclasses.field(default=None, repr=False)  # see keras_call


@dataclasses.dataclass
class StreamingPlan:
    """How the device cuts audio. A stepped encoder (``step`` set) takes ``window_frames`` new log-mel
    frames per invocation (its time stride); a windowed one windows of ``window_frames`` frames every
    ``hop_frames``. Clip heads run every ``hop_frames`` frames (one second) either way."""

    window_frames: int
    hop_frames: int
    context_frames: int  # by windows: log-mel frames of context on each side of the second a window covers
    output_frames: int  # embeddings per second (per window)
    pad_value: np.ndarray  # log-mel frame used beyond the ends of a clip (the input normalisation mean)
    branches: list[str]  # encoder outputs, in order (frames layer names)
    pieces: list[Piece]
    step: EncoderStep | None = None  # the stepped encoder's states, lags and warm-up

    def piece(self, name: str) -> Piece:
        return next(p for p in self.pieces if p.name == name)


def plan_streaming(
    network: keras.Model, tasks, frontend, time_pool_factor: int, architecture: str = "mtl", encoder: str = "auto"
) -> StreamingPlan:
    """Cut ``network`` (of the registered ``architecture``) into an encoder, clip heads and frame steps
    (see the module docstring). ``encoder``: "step", "window" or "auto" (step when every encoder layer
    can). ConfigError when a task's decoder cannot stream (a bidirectional GRU), or for ``"step"`` when
    the encoder cannot step."""
    if encoder not in ("auto", "step", "window"):
        raise ConfigError(f"encoder must be auto, step or window, not {encoder!r}")
    hop_frames = int(round(1.0 / frontend.frame_seconds))  # one second of frames
    if get_architecture(architecture).windowed:  # whole-clip networks run no encoder by the second
        check_streamable(frontend, time_pool_factor, architecture)
    n_mels = int(network.input.shape[-1])
    branches: list[str] = []
    streams = {task.name: get_architecture(architecture).stream(network, task) for task in tasks}
    for stream in streams.values():
        if stream.branch is not None and stream.branch not in branches:
            branches.append(stream.branch)
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
    step = None
    if branches and encoder != "window":
        try:
            step = build_encoder_step(network, branches, time_pool_factor, radius)
        except ConfigError as error:
            if encoder == "step":
                raise
            log.info("the encoder runs by windows: %s", error)
    if step is not None:
        pieces.append(Piece("encoder", step.model, "encoder_step"))
        window, context = time_pool_factor, 0
    elif branches:
        mel = keras.Input(shape=(window, n_mels), batch_size=1, name="mel")
        outputs = trunk(mel)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        named = [keras.layers.Cropping1D((crop, crop), name=b.replace("/", "_"))(o) for b, o in zip(branches, outputs)]
        pieces.append(Piece("encoder", keras.Model(mel, named, name="encoder"), "encoder"))
    for task in tasks:
        stream = streams[task.name]
        branch = stream.branch
        windows = max(1, int(round(task.clip_seconds)))
        if stream.kind == "clip_model":
            frames = frontend.n_frames(int(round(task.clip_seconds * frontend.sample_rate)))
            mel = keras.Input(shape=(frames, n_mels), batch_size=1, name="mel")
            path = keras.Model(network.input, network.output[task.name])
            pieces.append(
                Piece(
                    f"{task.name}_model",
                    keras.Model(mel, path(mel), name=f"{task.name}_model"),
                    "clip_model",
                    task.name,
                    windows=windows,
                )
            )
            continue
        width = int(network.get_layer(branch).output.shape[-1])
        if stream.kind == "clip_head":
            pieces.append(
                Piece(
                    f"{task.name}_head",
                    clip_head(network, stream.layers, windows * output_frames, width, task.name),
                    "clip_head",
                    task.name,
                    branch,
                    windows,
                )
            )
        else:
            pieces.append(
                Piece(
                    f"{task.name}_step",
                    frame_step(network, stream.layers, width, task.name),
                    "frame_step",
                    task.name,
                    branch,
                )
            )
    return StreamingPlan(window, hop_frames, context, output_frames, pad_value, branches, pieces, step)


def receptive_radius(model: keras.Model) -> int:
    """Input frames on each side that can reach an output frame: "same" convolutions add
    (kernel // 2) * dilation, "valid" ones (kernel - 1) * dilation (all on one side: a causal
    model's convolutions, padded before them), poolings (pool - 1), each times the stride
    accumulated before them (an upper bound for branching models; time is axis 1)."""
    radius, stride = 0, 1
    for layer in _layers_in_order(model):
        config = layer.get_config()
        if "kernel_size" in config:
            kernel, step = config["kernel_size"][0], config["strides"][0]
            dilation = config.get("dilation_rate", (1,))[0]
            reach = kernel // 2 if config.get("padding", "same") == "same" else kernel - 1
            radius += reach * dilation * stride
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


def clip_head(network: keras.Model, layers, frames: int, width: int, task: str) -> keras.Model:
    """The head's ``layers`` (e.g. attention pooling + classifier) over ``frames`` embeddings of
    ``width`` features: (1, frames, width) -> (1, classes); the trained layers, shared weights."""
    x = inputs = keras.Input(shape=(frames, width), batch_size=1, name="frames")
    for name in layers:
        x = network.get_layer(name)(x)
    return keras.Model(inputs, x, name=f"{task}_head")


def frame_step(network: keras.Model, layers, width: int, task: str) -> keras.Model:
    """One step of a frame task's ``layers`` (its recurrent path, then the classifier): inputs ``frame``
    (1, width) and ``state`` (1, units), outputs ``scores`` (1, classes) and ``new_state``; the states
    of several GRUs lie side by side in one vector, in path order."""
    *path, classifier = layers
    layers = [network.get_layer(name) for name in path]
    grus = [layer for layer in layers if isinstance(layer, keras.layers.GRU)]
    frame = keras.Input(shape=(width,), batch_size=1, name="frame")
    state = keras.Input(shape=(sum(g.units for g in grus),), batch_size=1, name="state")
    x, offset, new_states = frame, 0, []
    for layer in layers:
        if isinstance(layer, keras.layers.GRU):
            h = state if len(grus) == 1 else state[:, offset : offset + layer.units]
            x = _gru_step(layer, x, h)
            offset += layer.units
            new_states.append(x)
        else:
            x = layer(x)
    if len(new_states) == 1:
        new_state = keras.layers.Identity(name="new_state")(new_states[0])
    else:
        new_state = keras.layers.Concatenate(name="new_state")(new_states)
    scores = network.get_layer(classifier)(x)
    scores = keras.layers.Identity(name="scores")(scores)
    return keras.Model([frame, state], [scores, new_state], name=f"{task}_step")


def _gru_step(gru, x, state):
    """One step of a Keras GRU (reset_after) as dense layers: z = sig(x Wz + (bz + cz) + h Uz),
    r = sig(x Wr + (br + cr) + h Ur), n = tanh(x Wn + bn + r * (h Un + cn)), h' = n + z * (h - n).

    The z and r gates' two biases are one, on the input's dense layer: with a bias on each, TFLite's
    16x8 quantiser (TF 2.21) folds the two into one constant that both FULLY_CONNECTED operators share,
    quantised at the recurrent one's scale, so the input's is read 16x too large (measured: gate
    pre-activations off by up to 2.2, the speech VAD's ROC-AUC −1 point)."""
    if not (
        gru.reset_after
        and gru.use_bias
        and gru.recurrent_activation.__name__ == "sigmoid"
        and gru.activation.__name__ == "tanh"
    ):
        raise ConfigError(f"{gru.name}: only the default GRU (reset_after, sigmoid/tanh, bias) can be exported")
    kernel, recurrent, bias = gru.get_weights()
    units = gru.units
    gates = {}
    for index, gate in enumerate(("z", "r", "n")):
        cols = slice(index * units, (index + 1) * units)
        recurrent_bias = gate == "n"  # inside r * (h Un + cn): it cannot join the input's bias
        x_part = keras.layers.Dense(units, name=f"{gru.name}_x{gate}")
        h_part = keras.layers.Dense(units, use_bias=recurrent_bias, name=f"{gru.name}_h{gate}")
        gates[gate] = (x_part(x), h_part(state))
        if recurrent_bias:
            x_part.set_weights([kernel[:, cols], bias[0, cols]])
            h_part.set_weights([recurrent[:, cols], bias[1, cols]])
        else:
            x_part.set_weights([kernel[:, cols], bias[0, cols] + bias[1, cols]])
            h_part.set_weights([recurrent[:, cols]])
    z = keras.layers.Activation("sigmoid", name=f"{gru.name}_z")(keras.layers.Add()(list(gates["z"])))
    r = keras.layers.Activation("sigmoid", name=f"{gru.name}_r")(keras.layers.Add()(list(gates["r"])))
    n = keras.layers.Activation("tanh", name=f"{gru.name}_n")(
        keras.layers.Add()([gates["n"][0], keras.layers.Multiply()([r, gates["n"][1]])])
    )
    return keras.layers.Add()([n, keras.layers.Multiply()([z, keras.layers.Subtract()([state, n])])])


def clip_windows(frames: int, plan: StreamingPlan) -> int:
    """Seconds (encoder windows, clip-head steps) a clip of ``frames`` log-mel frames is cut into:
    max(1, ceil((frames - 1) / hop)), the last one padded with the pad frame."""
    return max(1, math.ceil((frames - 1) / plan.hop_frames))


def before_stream(state, steps: int, step_frames: int) -> int:
    """Rows of a stepped encoder's ``state`` (a StepState) that hold frames from before the stream after
    ``steps`` steps: the step computes them from the zero states, so they are not zero, while the
    whole-clip network pads every layer's input with zeros there. The caller sets them to zero (the
    first few steps only); the embeddings then equal the whole-clip network's from the stream's first
    one on (the layers' outputs for such frames reach the next layer through its state, never
    within the step that computes them, in the encoders the step builder makes; test)."""
    frames = step_frames // state.stride
    return max(0, min(state.shape[0], state.shape[0] + state.lag - steps * frames))


def invocations_per_second(piece: Piece, plan: StreamingPlan) -> float:
    """How often the device runs ``piece`` per second of audio: a stepped encoder every step, a frame
    step once per embedding, a clip head once per clip of ``windows`` seconds, the rest once a second."""
    if piece.kind == "encoder_step":
        return plan.hop_frames / plan.window_frames
    if piece.kind == "frame_step":
        return float(plan.output_frames)
    if piece.kind == "clip_head":
        return 1.0 / piece.windows
    return 1.0


def windows_of(features: np.ndarray, plan: StreamingPlan) -> list[np.ndarray]:
    """The encoder windows of a clip's log-mel frames: window k covers frames
    [k * hop - context, (k + 1) * hop + context), padded with ``plan.pad_value`` beyond the clip."""
    count = clip_windows(features.shape[0], plan)
    pad = np.broadcast_to(plan.pad_value, (plan.context_frames, features.shape[1]))
    tail = count * plan.hop_frames + plan.context_frames - features.shape[0]
    padded = np.concatenate([pad, features, np.broadcast_to(plan.pad_value, (max(0, tail), features.shape[1]))])
    return [
        padded[k * plan.hop_frames : k * plan.hop_frames + plan.window_frames].astype(np.float32) for k in range(count)
    ]


class StreamingRunner:
    """Runs a clip through the pieces of a plan: encoder per window, clip heads on a clip's windows,
    frame steps frame by frame with the state fed back. ``call(piece, inputs)`` runs one piece
    (float Keras or an int8 interpreter) on float inputs and returns float outputs by name."""

    def __init__(self, plan: StreamingPlan, call: Callable[[Piece, dict], dict]):
        self.plan = plan
        self.call = call

    def prepare(self, piece: Piece, name: str, values: np.ndarray) -> np.ndarray:
        """A piece's input for many steps at once, as the call takes it (int8 calls quantise it here
        once rather than at every step: ``call.prepare``)."""
        prepare = getattr(self.call, "prepare", None)
        return values if prepare is None else prepare(piece, name, values)

    def embeddings(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """{branch: (frames, F)} for a whole clip: as many embeddings as the windows of the clip give
        (whole seconds, the last one padded with the pad frame), step by step or window by window."""
        if self.plan.step is not None:
            return self.stepped_embeddings(features)
        encoder = self.plan.piece("encoder")
        per_branch = {b: [] for b in self.plan.branches}
        for window in windows_of(features, self.plan):
            out = self.call(encoder, {"mel": window[None]})
            for branch in self.plan.branches:
                per_branch[branch].append(out[branch.replace("/", "_")][0])
        return {b: np.concatenate(v) for b, v in per_branch.items()}

    def encoder_steps(self, features: np.ndarray):
        """The stepped encoder over a clip: yields (inputs, outputs) of every step, the states fed
        back; frames beyond the clip are the pad frame, until every branch has its embeddings."""
        plan, step = self.plan, self.plan.step
        encoder = plan.piece("encoder")
        wanted = clip_windows(features.shape[0], plan) * plan.output_frames
        per_step = plan.output_frames * step.step_frames // plan.hop_frames
        steps = max(-(-(wanted + lag) // per_step) for lag in step.lags.values())
        tail = steps * step.step_frames - features.shape[0]
        if tail > 0:
            features = np.concatenate([features, np.broadcast_to(plan.pad_value, (tail, features.shape[1]))])
        states = {s.name: np.zeros((1, *s.shape), np.float32) for s in step.states}
        zeros = {s.name: self.prepare(encoder, s.name, states[s.name]) for s in step.states}
        features = self.prepare(encoder, "mel", features)
        for k in range(steps):
            inputs = {"mel": features[None, k * step.step_frames : (k + 1) * step.step_frames], **states}
            outputs = self.call(encoder, inputs)
            yield inputs, outputs
            states = {s.name: outputs[f"new_{s.name}"] for s in step.states}
            for s in step.states:  # frames before the stream: zero, as the whole-clip network's padding
                rows = before_stream(s, k + 1, step.step_frames)
                if rows:  # the call's own zero: quantised where it hands the state back as integers
                    state, fill = states[s.name], zeros[s.name]
                    if state.dtype != fill.dtype:
                        if not np.issubdtype(state.dtype, np.floating):  # an integer 0 is not its zero point
                            raise TypeError(f"the encoder call returns {s.name} as {state.dtype} without a prepare")
                        fill = np.zeros_like(state)
                    states[s.name] = np.concatenate([fill[:, :rows], state[:, rows:]], axis=1)

    def stepped_embeddings(self, features: np.ndarray, steps: list | None = None) -> dict[str, np.ndarray]:
        """{branch: (frames, F)} from the encoder's steps over ``features`` (``steps``: the (inputs,
        outputs) of ``encoder_steps(features)`` when the caller has them already), each branch's lag
        dropped."""
        plan = self.plan
        per_branch = {b: [] for b in plan.branches}
        for _, outputs in steps if steps is not None else self.encoder_steps(features):
            for branch in plan.branches:
                per_branch[branch].append(outputs[branch.replace("/", "_")][0])
        wanted = clip_windows(features.shape[0], plan) * plan.output_frames
        return {
            b: np.concatenate(v)[plan.step.lags[b] : plan.step.lags[b] + wanted].astype(np.float32)
            for b, v in per_branch.items()
        }

    def predict(self, piece: Piece, features: np.ndarray, embeddings: dict | None = None) -> np.ndarray:
        if piece.kind == "clip_model":
            return self.call(piece, {"mel": features[None]})[piece.model.output_names[0]][0]
        frames = (embeddings or self.embeddings(features))[piece.branch]
        if piece.kind == "clip_head":
            frames = fit_frames(frames, piece.model.inputs[0].shape[1])
            return self.call(piece, {"frames": frames[None]})[piece.model.output_names[0]][0]
        state = np.zeros((1, piece.model.inputs[1].shape[-1]), np.float32)
        scores = []
        for frame in self.prepare(piece, "frame", frames):
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


def fit_frames(frames: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` frames, zero-padded at the end when there are fewer."""
    frames = frames[:width]
    if frames.shape[0] < width:
        frames = np.concatenate([frames, np.zeros((width - frames.shape[0], frames.shape[1]), frames.dtype)])
    return frames
