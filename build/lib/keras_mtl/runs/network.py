"""The network a run configures: the architecture's options, its time resolution, and the built model."""
from __future__ import annotations

import dataclasses


from keras_mtl.core.backend import keras
from keras_mtl.core.errors import ConfigError
from keras_mtl.models import architectures, normalization
from keras_mtl.runs.config import RunConfig


def architecture_options(config: RunConfig) -> dict:
    """The registry options of the configured network: the model section for ``mtl``; every
    architecture's input width is the front end's band count (ConfigError when its options say
    otherwise)."""
    if config.architecture == "mtl":
        return dataclasses.asdict(config.model)
    options = dict(config.architecture_options or {})
    bands = options.get("n_mels", config.frontend.n_mels)
    if bands != config.frontend.n_mels:
        raise ConfigError(
            f"architecture_options.n_mels {bands} differs from frontend.n_mels {config.frontend.n_mels}: "
            "set frontend.n_mels; the network follows it"
        )
    return {**options, "n_mels": config.frontend.n_mels}


def time_resolution(config: RunConfig) -> tuple[int, bool]:
    """(input frames per output frame, whether the count rounds up) of the configured network."""
    architecture = architectures.get_architecture(config.architecture)
    return architecture.time_pool_factor(architecture_options(config)), architecture.ceil_frames


def check_streamable(frontend, factor: int, architecture: str = "mtl") -> None:
    """ConfigError unless one second of log-mel frames (``1 / frontend.frame_seconds``) is a whole
    multiple of the network's time pooling ``factor``: the device runs a windowed or stepped encoder
    one second at a time (keras_mtl.deploy.streaming). The message names the nearest hop that works."""
    frames = int(round(1.0 / frontend.frame_seconds))
    if frames % factor == 0:
        return
    rate = frontend.sample_rate
    fitting = [f for f in range(factor, rate + 1, factor) if rate % f == 0]
    suggestion = f"; no hop at {rate} Hz gives a multiple of {factor} frames a second: change the time pooling"
    if fitting:
        best = min(fitting, key=lambda f: (abs(f - frames) / frames, -f))
        hop = rate // best
        suggestion = (
            f"; a front end that fits: frontend.hop_length: {hop} ({hop / rate * 1000:g} ms, {best} frames a "
            "second) in a --config YAML"
        )
    raise ConfigError(
        f"--architecture {architecture} pools time by {factor}, but one second of the front end (hop_length "
        f"{frontend.hop_length} at {rate} Hz: {frames} frames) is not a multiple of {factor}, so the exported "
        f"encoder cannot run one second at a time{suggestion}"
    )


def check_deployable(config: RunConfig) -> None:
    """Before training: ConfigError when the configured network could train but not export
    (see ``check_streamable``); whole-clip architectures (CP-Mobile, the Georgiev DNN) always export."""
    architecture = architectures.get_architecture(config.architecture)
    if architecture.windowed:
        factor, _ = time_resolution(config)
        check_streamable(config.frontend, factor, config.architecture)


def build_network(config: RunConfig, tasks, feature_mean=None, feature_var=None, weak_output: bool = False) -> keras.Model:
    """The configured network from the registry; input statistics go to architectures that use them;
    ``weak_output`` adds the clip-level outputs of frame tasks that the mean teacher trains; with
    ``batch_norm: renorm`` its batch normalisation layers use Batch Renormalization
    (keras_mtl.models.normalization; ``joint``, the default for two or more tasks, is the strategies')."""
    options = architecture_options(config)
    if architectures.get_architecture(config.architecture).input_statistics:
        options.update(feature_mean=feature_mean, feature_var=feature_var)
    if weak_output:
        options["weak_output"] = True
    network = architectures.build(config.architecture, tasks, **options)
    if normalization.resolve_mode(config.batch_norm, len(tasks)) == "renorm":
        network = normalization.with_batch_renorm(network)
    return network
