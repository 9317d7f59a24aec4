"""The network a run configures: the architecture's options, its time resolution, and the built model."""
from __future__ import annotations

import dataclasses


from keras_mtl.models import architectures
from keras_mtl.core.backend import keras
from keras_mtl.runs.config import RunConfig


def architecture_options(config: RunConfig) -> dict:
    """The registry options of the configured network: the model section for ``mtl``."""
    if config.architecture == "mtl":
        return dataclasses.asdict(config.model)
    return dict(config.architecture_options or {})


def time_resolution(config: RunConfig) -> tuple[int, bool]:
    """(input frames per output frame, whether the count rounds up) of the configured network."""
    architecture = architectures.get_architecture(config.architecture)
    return architecture.time_pool_factor(architecture_options(config)), architecture.ceil_frames


def build_network(config: RunConfig, tasks, feature_mean=None, feature_var=None, weak_output: bool = False) -> keras.Model:
    """The configured network from the registry; input statistics go to architectures that use them;
    ``weak_output`` adds the clip-level outputs of frame tasks that the mean teacher trains."""
    options = architecture_options(config)
    if architectures.get_architecture(config.architecture).input_statistics:
        options.update(feature_mean=feature_mean, feature_var=feature_var)
    if weak_output:
        options["weak_output"] = True
    return architectures.build(config.architecture, tasks, **options)
