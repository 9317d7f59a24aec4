"""The run folder: the one place that writes and reads a run's files.

    config.yaml          the full resolved configuration (reusable with --config)
    model_summary.txt    Keras summary
    profile.txt          params and MACs per 1 s of audio, per layer
    model.keras          the trained functional network (tf_keras format)
    history.csv          per-epoch training and validation losses/metrics
    batch_loss.csv       the training losses after every batch (running mean within each epoch)
    training.json        the run facts (strategy, loss weights, epochs, seconds), written before evaluation
    metrics.json         per task: DCASE metrics, params, MACs / 1 s; plus the run facts
    training_curves.png  loss and headline metric per epoch
    checkpoint/          the last epoch's checkpoint; ``latest`` names it

Every file is written atomically (temporary name, then rename). Training, resume, evaluation,
export, compression and the studies read runs through ``open_run`` / ``resume_config``.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import yaml

from keras_mtl.core import fileio
from keras_mtl.core.backend import keras
from keras_mtl.core.errors import ConfigError
from keras_mtl.core.paths import runs_dir
from keras_mtl.models import architectures, profiling
from keras_mtl.runs import config as run_config
from keras_mtl.runs.config import RunConfig
from keras_mtl.tasks.registry import resolve_tasks

CONFIG, NETWORK, METRICS, HISTORY = "config.yaml", "model.keras", "metrics.json", "history.csv"
TRAINING = "training.json"


def default_output_dir(config: RunConfig) -> Path:
    """``runs/<time>-<tasks>-<strategy>/`` (``claim_run_folder`` adds ``-2``, ``-3``, ... when taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return runs_dir() / f"{stamp}-{'+'.join(config.tasks)}-{config.strategy}"


#: what a run writes into its folder: one of them there means the folder holds a run
RUN_FILES = (CONFIG, NETWORK, METRICS, HISTORY, TRAINING, "checkpoint")


def claim_run_folder(path: str | Path | None, default: Path, overwrite: bool = False) -> Path:
    """The folder a new run writes, made before any data is read. ``path`` None: ``default``, or the
    first free ``default-2``, ``default-3``, ... (made atomically, so runs started in the same second
    never share one). A given folder that holds a run (``RUN_FILES``) is refused with a ConfigError
    naming what it holds, unless ``overwrite``: then everything in it is removed first (the run, its
    exports and reports), so two runs never mix."""
    if path is None:
        for index in range(1, 1000):
            candidate = default if index == 1 else default.with_name(f"{default.name}-{index}")
            try:
                candidate.mkdir(parents=True, exist_ok=False)
                return candidate
            except FileExistsError:
                continue
        raise ConfigError(f"{default}: no free run folder name; pass --output-dir")
    path = Path(path)
    held = [name for name in RUN_FILES if (path / name).exists()]
    if held:
        if not overwrite:
            finished = (path / METRICS).exists()
            hint = "" if finished else f" (continue it with --resume {path})"
            raise ConfigError(
                f"{path}: holds {'a finished' if finished else 'an unfinished'} run ({', '.join(held)}){hint}; "
                "pass another --output-dir, or --overwrite to replace it"
            )
        for target in path.iterdir():  # the whole folder: an old export or plot must not pass for the new run's
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    return fileio.ensure_writable(path, "; pass another --output-dir")


@dataclasses.dataclass
class Run:
    """A run folder that holds at least its configuration: its path, configuration and tasks."""
    path: Path
    config: RunConfig
    tasks: list

    @property
    def finished(self) -> bool:
        return (self.path / METRICS).is_file()

    def network(self) -> keras.Model:
        """The trained network (any registered architecture), without its training configuration."""
        return architectures.load_network(self.path / NETWORK)

    def metrics(self) -> dict:
        """metrics.json; ConfigError if the run has none."""
        return read_metrics(self.path)


def read_metrics(path: str | Path) -> dict:
    """A finished run folder's metrics.json; ConfigError if it is missing or damaged."""
    folder = Path(path)
    try:
        return json.loads((folder / METRICS).read_text())
    except OSError:
        raise ConfigError(f"{folder}: no {METRICS} (the run has not finished)") from None
    except ValueError as error:
        raise ConfigError(f"{folder / METRICS}: not valid JSON ({error})") from None


def read_config(path: str | Path, **override) -> RunConfig:
    """A run folder's configuration, built (fields added since the run take their defaults), with
    ``override`` merged on top; ConfigError if the folder has no readable config.yaml."""
    folder = Path(path)
    if not (folder / CONFIG).is_file():
        raise ConfigError(f"{folder}: not a run folder (no {CONFIG})")
    return run_config.build(run_config.merge(run_config.load_yaml(folder / CONFIG), override))


def open_run(path: str | Path, needs: tuple[str, ...] = (CONFIG, NETWORK)) -> Run:
    """The run in ``path``; ConfigError naming the first of ``needs`` it lacks."""
    folder = Path(path)
    for name in needs:
        if not (folder / name).exists():
            raise ConfigError(f"{folder}: not a finished run folder ({name} is missing)")
    config = read_config(folder)
    return Run(folder, config, resolve_tasks(list(config.tasks), config.custom_tasks))


def resume_config(path: str | Path) -> RunConfig:
    """The configuration of an interrupted run, writing into the same folder."""
    folder = Path(path)
    if not (folder / CONFIG).is_file():
        raise ConfigError(f"--resume {folder}: not a run folder (no {CONFIG})")
    if (folder / METRICS).is_file():
        raise ConfigError(f"--resume {folder}: that run has finished ({METRICS} exists)")
    return read_config(folder, output_dir=str(folder))


def describe_run(network, tasks, config: RunConfig, output_dir: Path | None) -> dict:
    """Keras summary and profile ({summary, profile_table, profile}); with ``output_dir``, also
    written there with the configuration (config.yaml, model_summary.txt, profile.txt)."""
    lines = []
    network.summary(line_length=110, print_fn=lambda line, *args, **kwargs: lines.append(line))
    summary = "\n".join(lines)
    layers = profiling.profile(network, config.frontend)
    table = profiling.format_table(layers)
    prof = profiling.summarize(layers, [t.name for t in tasks])
    if output_dir is not None:
        fileio.write_text(output_dir / CONFIG, yaml.safe_dump(config.to_dict(), sort_keys=False))
        fileio.write_text(output_dir / "model_summary.txt", summary + "\n")
        fileio.write_text(output_dir / "profile.txt", table + "\n")
    return {"summary": summary, "profile_table": table, "profile": prof}


def save_network(output_dir: Path, network: keras.Model) -> None:
    """model.keras, atomically."""
    with fileio.atomic_path(output_dir / NETWORK) as tmp:
        network.save(tmp)


def write_metrics(output_dir: Path, metrics: dict) -> None:
    """metrics.json, atomically; its presence marks the run finished."""
    fileio.write_json(output_dir / METRICS, metrics)


def write_training_facts(output_dir: Path, facts: dict) -> None:
    """training.json, atomically: the run facts, saved before evaluation so a failed one loses nothing."""
    fileio.write_json(output_dir / TRAINING, facts)


def read_training_facts(path: str | Path) -> dict:
    """A run folder's training.json ({} for runs made before it existed or a damaged file)."""
    try:
        return json.loads((Path(path) / TRAINING).read_text())
    except (OSError, ValueError):
        return {}


def task_result(task, split: str, task_metrics: dict, path_profile: dict, **extra) -> dict:
    """One task's entry of metrics.json (keyed by the task's name as the user wrote it): its safe name,
    split, metrics, headline, params and MACs / 1 s of its path."""
    return {"name": task.name, "split": split, "metrics": task_metrics,
            "headline": {"name": task.headline, "value": task_metrics.get(task.headline)},
            "params": path_profile["params"], "macs_per_second": path_profile["macs_per_second"], **extra}


def task_entry(metrics: dict, name: str) -> dict:
    """A task's entry of a metrics dict by its name as written or its safe name; KeyError if absent."""
    tasks = metrics["tasks"]
    if name in tasks:
        return tasks[name]
    for entry in tasks.values():
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    raise KeyError(name)


def latest_checkpoint(run_dir: Path) -> tuple[Path, dict] | None:
    """(checkpoint folder, its resume.json) of a run folder, or None."""
    pointer = run_dir / "checkpoint" / "latest"
    if not pointer.is_file():
        return None
    folder = run_dir / "checkpoint" / pointer.read_text().strip()
    try:
        return folder, json.loads((folder / "resume.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{folder}: damaged checkpoint (resume.json unreadable)") from None
