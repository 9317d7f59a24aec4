"""TODO docstring."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import yaml

from keras_mtl import architectures, fileio, profiling, reporting, weighting
from keras_mtl.backend import keras, tf
from keras_mtl.config import RunConfig
from keras_mtl.data import corpora, speech_synth, synthetic
from keras_mtl.data.pipeline import (FeatureExtractor, TaskSplit, feature_statistics, make_dataset,
                                     make_semi_supervised_dataset)
from keras_mtl.errors import ConfigError, DataError
from keras_mtl.strategies import SUMMING, get_strategy, make_optimizer
from keras_mtl.tasks import resolve_tasks


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
