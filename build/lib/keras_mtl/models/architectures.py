"""Model registry: every architecture by name, built for a list of tasks.

mtl            shared CNN encoder + per-task decoders (keras_mtl.models.mtl; the CNN, CRNN and MT
               models of seed 000 and the seed 001 template are presets of it)
cp_mobile      CP-Mobile (+GRN with grn=True), clip tasks (keras_mtl.models.cp_mobile)
cp_mobile_rnn  CP-Mobile with two more blocks and per-task decoders (seed 000 Fig. 3): GRU for
               frame tasks, attention + linear for clip tasks
georgiev_dnn   seed 004's DNN: per-band mean and standard deviation of the log filterbank
               frames, three hidden layers of 128, 256 and 512 units, clip tasks
mtl-vae        seed 002's multi-task VAE for one frame task (keras_mtl.models.vae): recurrent variational
               encoder, shared decoder, strong / weak / reconstruction heads; trains with its own
               strategy on strong, weak, unlabelled and strong real clips
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from keras_mtl.core.backend import keras, tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.models import mtl as models
from keras_mtl.models.cp_mobile import CPMobileConfig, build_cp_mobile, cp_mobile_encoder
from keras_mtl.models.vae import VAEConfig, build_mtl_vae


@dataclasses.dataclass(frozen=True)
class TaskStream:
    """How a task's decoder runs on a device, in the streaming form of keras_mtl.deploy.streaming.

    ``kind``: ``clip_head`` (a head over the per-frame embeddings of the clip's seconds, e.g. attention
    pooling + classifier), ``frame_step`` (one step per embedding with explicit recurrent state) or
    ``clip_model`` (no streaming decoder: the task's whole path runs once per clip). ``branch``: the
    layer whose output (batch, frames, features) the decoder reads; ``layers``: the decoder's layers in
    order (a frame step: its recurrent path, GRUs and dense layers, then the classifier)."""

    kind: str
    branch: str | None = None
    layers: tuple = ()


def input_layer(network: keras.Model, name: str) -> str:
    """The name of the layer that feeds layer ``name`` of ``network``."""
    return network.get_layer(name)._inbound_nodes[0].inbound_layers.name


def _attention_and_recurrent_heads(network: keras.Model, task) -> TaskStream:
    """The streams of models.mtl's heads: attention + classifier (clip), GRU + classifier (frame)."""
    names = {layer.name for layer in network.layers}
    if task.level == "clip":
        layers = (f"{task.name}/attention", f"{task.name}/classifier")
        return TaskStream("clip_head", input_layer(network, layers[0]), layers)
    if f"{task.name}/bigru" in names:
        raise ConfigError(
            f"task {task.name}: a bidirectional GRU cannot run frame by frame on a device; "
            "train with model.bidirectional: false to export it"
        )
    layers = (f"{task.name}/gru", f"{task.name}/classifier")
    return TaskStream("frame_step", input_layer(network, layers[0]), layers)


def _whole_clip(network: keras.Model, task) -> TaskStream:
    return TaskStream("clip_model")


def _mtl_vae_stream(network: keras.Model, task) -> TaskStream:
    """The inference path: encoder GRU -> latent mean (no sampling) -> decoder GRU -> strong head."""
    layers = ("shared/encoder_gru", "shared/latent_mean", "shared/decoder_gru", f"{task.name}/classifier")
    return TaskStream("frame_step", input_layer(network, layers[0]), layers)


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[Sequence, dict], keras.Model]
    time_pool_factor: Callable[[dict], int]
    levels: tuple = ("clip", "frame")
    description: str = ""
    ceil_frames: bool = False  # strided 'same' convolutions: ceil(n / factor) output frames, not floor
    input_statistics: bool = False  # build() takes feature_mean/feature_var (training-set statistics)
    weak_output: bool = False  # build() takes weak_output=True: frame tasks also output clip scores
    strategy: str | None = None  # the training strategy the architecture needs (None: --strategy)
    # (network, task) -> TaskStream: how the task's decoder streams on a device
    stream: Callable = _attention_and_recurrent_heads

    @property
    def windowed(self) -> bool:
        """Whether the device runs the encoder over a stream (by steps or one-second windows), so that
        one second of frames must be a multiple of the time pooling; False when every task's whole
        path runs over one clip (CP-Mobile, the Georgiev DNN)."""
        return self.stream is not _whole_clip

    def output_frames(self, options: dict, input_frames: int) -> int:
        factor = self.time_pool_factor(options)
        return -(-input_frames // factor) if self.ceil_frames else input_frames // factor


def _mtl(tasks, options: dict) -> keras.Model:
    """Options: ModelConfig fields, plus ``feature_mean``/``feature_var`` for the input normalisation."""
    options = dict(options)
    mean, var = options.pop("feature_mean", None), options.pop("feature_var", None)
    return models.build_model(tasks, models.ModelConfig(**options), feature_mean=mean, feature_var=var)


def _mtl_time_factor(options: dict) -> int:
    return models.ModelConfig(**{k: v for k, v in options.items() if not k.startswith("feature_")}).time_pool_factor


def _single_clip_task(tasks, name: str):
    if len(tasks) != 1 or tasks[0].level != "clip":
        raise ConfigError(f"{name} takes exactly one clip-level task")
    return tasks[0]


def _cp_mobile(tasks, options: dict) -> keras.Model:
    task = _single_clip_task(tasks, "cp_mobile")
    return build_cp_mobile(task.n_classes, CPMobileConfig(**{"n_mels": 128, **options}), task_name=task.name)


def _cp_mobile_rnn(tasks, options: dict) -> keras.Model:
    options = dict(options)
    gru_units = options.pop("gru_units", 128)
    weak_output = options.pop("weak_output", False)
    config = CPMobileConfig(**{"n_mels": 128, "blocks_per_stage": (3, 2, 3), **options})
    mel = keras.Input(shape=(None, config.n_mels), name="mel")
    x = keras.layers.Reshape((-1, config.n_mels, 1), name="shared/expand")(mel)
    x = cp_mobile_encoder(x, config)
    freq = math.ceil(config.n_mels / 4 / _freq_stride(config))
    frames = keras.layers.Reshape((-1, freq * config.stage_channels()[-1]), name="shared/frames")(x)
    head_config = models.ModelConfig(
        n_mels=config.n_mels, gru_units=gru_units, channels=(1,), pools=((1, 1),), weak_output=weak_output
    )
    outputs = {}
    for task in tasks:
        models.add_head_outputs(outputs, task, models.HEADS[task.level](frames, task, head_config))
    return keras.Model(mel, outputs, name="cp_mobile_rnn")


def _freq_stride(config: CPMobileConfig) -> int:
    return math.prod(stride[1] for stride in config.strides.values())


def _cp_time_factor(options: dict) -> int:
    config = CPMobileConfig(**{k: v for k, v in options.items() if k not in ("gru_units", "weak_output")})
    return 4 * math.prod(stride[0] for stride in config.strides.values())


@keras.utils.register_keras_serializable(package="keras_mtl")
class SummaryStatistics(keras.layers.Layer):
    """Per-band mean and standard deviation over time: (batch, time, bands) -> (batch, 2 * bands)."""

    def call(self, x):
        mean, var = tf.nn.moments(x, axes=[1])
        return tf.concat([mean, tf.sqrt(var + 1e-6)], axis=-1)


def _georgiev_dnn(tasks, options: dict) -> keras.Model:
    hidden = tuple(options.get("hidden", (128, 256, 512)))
    n_mels = options.get("n_mels", 128)
    mel = keras.Input(shape=(None, n_mels), name="mel")
    x = SummaryStatistics(name="shared/statistics")(mel)
    x = keras.layers.BatchNormalization(name="shared/input_bn")(x)
    for i, units in enumerate(hidden, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"shared/dense{i}")(x)
    outputs = {}
    for task in tasks:
        if task.level != "clip":
            raise ConfigError("georgiev_dnn predicts clip-level tasks only")
        outputs[task.name] = keras.layers.Dense(task.n_classes, activation="softmax", name=f"{task.name}/classifier")(x)
    return keras.Model(mel, outputs, name="georgiev_dnn")


def _mtl_vae(tasks, options: dict) -> keras.Model:
    options = dict(options)
    mean, var = options.pop("feature_mean", None), options.pop("feature_var", None)
    return build_mtl_vae(tasks, VAEConfig(**options), feature_mean=mean, feature_var=var)


def _mtl_vae_time_factor(options: dict) -> int:
    return VAEConfig(**{k: v for k, v in options.items() if not k.startswith("feature_")}).time_pool_factor


REGISTRY = {
    "mtl": Architecture(
        "mtl",
        _mtl,
        _mtl_time_factor,
        description="shared CNN encoder, attention (clip) and GRU (frame) decoders",
        input_statistics=True,
        weak_output=True,
    ),
    "cp_mobile": Architecture(
        "cp_mobile",
        _cp_mobile,
        _cp_time_factor,
        ("clip",),
        "CP-Mobile, one clip task",
        ceil_frames=True,
        stream=_whole_clip,
    ),
    "cp_mobile_rnn": Architecture(
        "cp_mobile_rnn",
        _cp_mobile_rnn,
        _cp_time_factor,
        description="CP-Mobile + 2 blocks + per-task decoders",
        ceil_frames=True,
        weak_output=True,
    ),
    "georgiev_dnn": Architecture(
        "georgiev_dnn", _georgiev_dnn, lambda o: 1, ("clip",), "summary-statistics DNN", stream=_whole_clip
    ),
    "mtl-vae": Architecture(
        "mtl-vae",
        _mtl_vae,
        _mtl_vae_time_factor,
        ("frame",),
        "multi-task VAE for SED",
        input_statistics=True,
        weak_output=True,
        strategy="mtl-vae",
        stream=_mtl_vae_stream,
    ),
}


def get_architecture(name: str) -> Architecture:
    if name not in REGISTRY:
        raise ConfigError(f"unknown architecture {name!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


def build(name: str, tasks: Sequence, **options) -> keras.Model:
    """``build('cp_mobile', [asc])``; ``options`` are the architecture's config fields."""
    architecture = get_architecture(name)
    for task in tasks:
        if task.level not in architecture.levels:
            raise ConfigError(f"{name} cannot predict {task.level}-level task {task.name}")
    return architecture.build(list(tasks), options)


def load_network(path) -> keras.Model:
    """A saved network of any registered architecture (their custom layers are registered by the
    imports of this module), without its training configuration."""
    return keras.models.load_model(path, compile=False)
