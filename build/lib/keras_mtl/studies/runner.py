"""The resumable batch runner of every study: train a list of runs, skipping finished ones."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from keras_mtl.runs.config import RunConfig
from keras_mtl.runs.folder import METRICS
from keras_mtl.training.fit import check_strategy_options, train

log = logging.getLogger(__name__)


def train_unfinished(config: RunConfig) -> dict:
    """Train a study's run into its folder, replacing what an interrupted earlier attempt left there
    (the runner calls it only for folders without metrics.json)."""
    return train(config, overwrite=True)


def run_all(
    jobs: Sequence[tuple[str, RunConfig]],
    dry_run: bool = False,
    train_run: Callable[[RunConfig], dict] = train_unfinished,
) -> list[Path]:
    """Train each (label, configuration) whose run folder (``config.output_dir``) has no metrics.json
    yet, in order, with a progress line each; so rerunning a study resumes it. Every configuration's
    strategy options are checked before anything trains (ConfigError). ``dry_run``: list, train
    nothing. Returns the run folders in job order."""
    for _, config in jobs:
        check_strategy_options(config)
    folders = []
    for index, (label, config) in enumerate(jobs, start=1):
        folder = Path(config.output_dir)
        folders.append(folder)
        if dry_run:
            log.info("[%d/%d] %s -> %s", index, len(jobs), label, folder)
        elif (folder / METRICS).exists():
            log.info("[%d/%d] %s: done before, skipped", index, len(jobs), label)
        else:
            log.info("[%d/%d] %s", index, len(jobs), label)
            train_run(config)
    return folders
