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


def make_distribution(config: RunConfig):
    """The tf.distribute strategy of ``config.distribute`` (None: TensorFlow's default). Must run
    before any other TensorFlow op: collective ops are configured at start-up."""
    if config.distribute is None:
        return None
    if config.distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if not os.environ.get("TF_CONFIG"):
        raise ConfigError("--distribute multi-worker reads the cluster from TF_CONFIG, which is not set "
                          '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}})')
    if not config.output_dir:
        raise ConfigError("--distribute multi-worker needs --output-dir (the same on every worker)")
    return tf.distribute.MultiWorkerMirroredStrategy()


def worker_role() -> tuple[bool, str]:
    """(whether this process is the chief, its task name) from TF_CONFIG; (True, "") without one."""
    cluster_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task, cluster = cluster_config.get("task") or {}, cluster_config.get("cluster") or {}
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    return chief, f"{kind}-{index}"
