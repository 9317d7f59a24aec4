"""tf.distribute set-up: MirroredStrategy or MultiWorkerMirroredStrategy (cluster from TF_CONFIG)."""

from __future__ import annotations

import json
import os

from keras_mtl.core.backend import tf
from keras_mtl.core.errors import ConfigError
from keras_mtl.runs.config import RunConfig


def make_distribution(config: RunConfig):
    """The tf.distribute strategy of ``config.distribute`` (None: TensorFlow's default). Must run
    before any other TensorFlow op: collective ops are configured at start-up."""
    if config.distribute is None:
        return None
    if config.distribute == "mirrored":
        return tf.distribute.MirroredStrategy()
    if not os.environ.get("TF_CONFIG"):
        raise ConfigError(
            "--distribute multi-worker reads the cluster from TF_CONFIG, which is not set "
            '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}})'
        )
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
