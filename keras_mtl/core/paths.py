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


REPO_ROOT = Path(__file__).resolve().parent.parent


def _in_checkout() -> bool:
    return (REPO_ROOT / "datasets").is_dir() and (REPO_ROOT / "keras_mtl").is_dir()


def default_data_dir() -> Path:
    """Where the built-in synthetic data is generated."""
    if os.environ.get("KERAS_MTL_DATA_DIR"):
        return Path(os.environ["KERAS_MTL_DATA_DIR"])
    return REPO_ROOT / "datasets" / "synthetic" if _in_checkout() else Path.home() / ".cache" / "keras_mtl" / "synthetic"


def default_cache_dir() -> Path:
    """Where log-mel features are cached."""
    if os.environ.get("KERAS_MTL_CACHE_DIR"):
        return Path(os.environ["KERAS_MTL_CACHE_DIR"])
    return REPO_ROOT / "datasets" / ".cache" / "features" if _in_checkout() else Path.home() / ".cache" / "keras_mtl" / "features"
