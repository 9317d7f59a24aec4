"""Evaluation of a trained network on its tasks' test splits, and of a finished run folder."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from keras_mtl.core import fileio
from keras_mtl.data.pipeline import TaskSplit, make_dataset
from keras_mtl.models.mtl import task_submodel
from keras_mtl.runs.folder import METRICS, describe_run, open_run, read_training_facts, task_result, write_metrics
from keras_mtl.runs.inputs import PreparedData, prepare_data

log = logging.getLogger(__name__)


def predict_split(path_model, split: TaskSplit, batch_size: int) -> list[np.ndarray]:
    """The task path's output for every clip of ``split``, in order (one array per clip)."""
    outputs = []
    for features, _ in make_dataset(split, batch_size, training=False):
        outputs.extend(np.asarray(path_model(features, training=False)))
    return outputs


def evaluate_task(path_model, task, data: PreparedData, tc) -> dict:
    """The task's DCASE-style metrics of ``path_model`` (the task's path) on its test split."""
    split = data.test[task.name]
    predictions, items = split.whole_recordings(predict_split(path_model, split, tc.batch_for(task.name)))
    return task.evaluate(predictions, items, split.frame_seconds)


def evaluate_tasks(paths: dict, tasks, data: PreparedData, tc, profile: dict) -> dict:
    """metrics.json's ``tasks`` section: every task's metrics on its test split, with the params and
    MACs / 1 s of its path (``profile``: keras_mtl.models.profiling.summarize) and its training clips."""
    return {
        task.display: task_result(
            task,
            data.test[task.name].split,
            evaluate_task(paths[task.name], task, data, tc),
            profile["task_paths"][task.name],
            train_clips=len(data.train[task.name]),
        )
        for task in tasks
    }


def evaluate_run(run_dir: str | Path) -> dict:
    """Re-evaluate a run folder's network on its test splits and rewrite the ``tasks`` section of its
    metrics.json (the other run facts are kept, or taken from training.json when an earlier
    evaluation failed); returns the new metrics.
    ConfigError if the folder holds no finished run."""
    run = open_run(run_dir)
    fileio.ensure_writable(run.path)  # metrics.json is rewritten there: known before the evaluation
    data = prepare_data(run.config, run.tasks)
    network = run.network()
    info = describe_run(network, run.tasks, run.config, output_dir=None)
    paths = {task.name: task_submodel(network, task.name) for task in run.tasks}
    results = evaluate_tasks(paths, run.tasks, data, run.config.training, info["profile"])
    metrics = run.metrics() if run.finished else read_training_facts(run.path)
    metrics["tasks"] = results
    metrics.setdefault("model", info["profile"]["total"])
    metrics.setdefault("output_dir", str(run.path))
    write_metrics(run.path, metrics)
    log.info("%s: %s rewritten", run.path, METRICS)
    return metrics
