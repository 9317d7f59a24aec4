"""A finished run compressed into a new run folder: LTH or LT4REC pruning, or QAT fine-tuning and export."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from keras_mtl.compression.pruning import (
    lottery_ticket,
    model_params,
    nonzero_params,
    prunable_weights,
    sparse_sharing,
    union_masks,
)
from keras_mtl.core import fileio
from keras_mtl.core.backend import keras
from keras_mtl.core.errors import ConfigError
from keras_mtl.core.reporting import pyplot, save_figure
from keras_mtl.data.pipeline import feature_statistics
from keras_mtl.deploy.export import export_run
from keras_mtl.deploy.qat import qat_finetune
from keras_mtl.runs.folder import CONFIG, METRICS, describe_run, open_run, read_metrics
from keras_mtl.runs.inputs import prepare_data
from keras_mtl.runs.network import build_network
from keras_mtl.training.callbacks import HistoryWriter
from keras_mtl.training.evaluate import evaluate_task

log = logging.getLogger(__name__)


METHODS = ("lth", "lt4rec", "qat")


@dataclasses.dataclass(frozen=True)
class CompressionSettings:
    method: str
    target_params: int | None = None  # non-zero parameters to prune down to (default: half the model's)
    rate: float = 0.2  # fraction of the surviving weights pruned per round
    epochs: int | None = None  # per training round / QAT epochs (default: the run's epochs; QAT: 2)
    rewind_epoch: int = 0  # LTH: rewind to the weights after this many epochs of the first round (0: initial)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r}: one of {', '.join(METHODS)}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError("--epochs must be at least 1")
        if self.rewind_epoch < 0:
            raise ConfigError("--rewind-epoch must be 0 or more")
        if self.target_params is not None and self.target_params < 1:
            raise ConfigError("--target-params must be a positive number of parameters")


def compress_run(run_dir, settings: CompressionSettings, out_dir=None, **export_options) -> dict:
    """Compresses a finished run into a new run folder (default ``<run>/compress-<method>``): config,
    summary, model.keras, history.csv (one row per round), metrics.json (per task metrics; non-zero
    parameters as ``model.params``) and, for pruning, masks.npz and rounds.png. LTH and LT4REC
    start from the run's configuration with fresh initial weights (the run's seed); QAT fine-tunes
    the run's trained network and exports it (int8 beside the run's post-training quantisation)."""
    run_dir = Path(run_dir)
    run = open_run(run_dir, needs=(CONFIG, METRICS))
    out = Path(out_dir) if out_dir else run_dir / f"compress-{settings.method}"
    config, tasks = dataclasses.replace(run.config, output_dir=str(out)), run.tasks
    if config.architecture != "mtl":
        raise ConfigError(f"{run_dir}: compression works on the mtl architecture, not {config.architecture}")
    if settings.method == "qat":
        return _compress_qat(run_dir, config, tasks, settings, out, export_options)
    keras.utils.set_random_seed(config.seed)
    data = prepare_data(config, tasks)
    mean, var = feature_statistics(list(data.train.values()))
    network = build_network(config, tasks, feature_mean=mean, feature_var=var, weak_output=bool(data.semi))
    total = model_params(network)
    target = settings.target_params or total // 2
    out.mkdir(parents=True, exist_ok=True)
    info = describe_run(network, tasks, config, output_dir=out)
    rows = []
    history = HistoryWriter(out / "history.csv")

    def on_round(row):
        flat = {"round": row["round"], "fraction": round(row["fraction"], 4), "nonzero_params": row["nonzero_params"]}
        prefix = "single_" if "single_headline" in row else ""
        for name, value in row.get("headline", row.get("single_headline", {})).items():
            flat[f"{name}_{prefix}headline"] = float("nan") if value is None else value
        rows.append(row)
        history.on_epoch_end(len(rows) - 1, flat)

    if settings.method == "lth":
        masks, _, metrics = lottery_ticket(
            network,
            tasks,
            data,
            config,
            target,
            settings.rate,
            settings.epochs,
            settings.rewind_epoch,
            on_round=on_round,
        )
        nonzero = nonzero_params(total, masks)
        saved_masks = masks
    else:
        task_masks, _, metrics = sparse_sharing(
            network, tasks, data, config, target, settings.rate, settings.epochs, on_round=on_round
        )
        keys = {key: tuple(v.shape) for key, v in prunable_weights(network).items()}
        nonzero = nonzero_params(total, union_masks(task_masks, keys))
        saved_masks = {f"{name}/{key}": mask for name, masks in task_masks.items() for key, mask in masks.items()}
    with fileio.atomic_path(out / "model.keras") as tmp:
        network.save(tmp)
    with fileio.atomic_path(out / "masks.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **saved_masks)
    paths = info["profile"]["task_paths"]
    result = {
        "tasks": {
            t.name: {
                "split": data.test[t.name].split,
                "metrics": metrics[t.name],
                "headline": {"name": t.headline, "value": metrics[t.name][t.headline]},
                "params": paths[t.name]["params"],
                "macs_per_second": paths[t.name]["macs_per_second"],
            }
            for t in tasks
        },
        "model": {**info["profile"]["total"], "params": nonzero, "dense_params": total},
        "compression": {
            "method": settings.method,
            "rate": settings.rate,
            "target_params": target,
            "rewind_epoch": settings.rewind_epoch,
            "epochs_per_round": settings.epochs or config.training.epochs,
            "source_run": str(run_dir),
            "rounds": rows,
        },
        "output_dir": str(out),
    }
    fileio.write_json(out / "metrics.json", result)
    plot_rounds(rows, tasks, out / "rounds.png")
    log.info(
        "%s: %s non-zero parameters of %s; %s",
        settings.method.upper(),
        f"{nonzero:,}",
        f"{total:,}",
        ", ".join(f"{t.name} {t.headline} {metrics[t.name][t.headline]:.4f}" for t in tasks),
    )
    return result


def plot_rounds(rows: list[dict], tasks, path) -> None:
    """Headline per task against the non-zero parameters, one point per round."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for task in tasks:
        key = "headline" if "headline" in rows[0] else "single_headline"
        ax.plot([r["nonzero_params"] for r in rows], [r[key][task.name] for r in rows], marker="o", label=task.name)
    ax.invert_xaxis()
    ax.set_xlabel(
        "non-zero parameters (after the round's pruning)" if "single_headline" in rows[0] else "non-zero parameters"
    )
    ax.set_ylabel("headline metric (test)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def _compress_qat(run_dir, config, tasks, settings: CompressionSettings, out, export_options: dict) -> dict:
    """QAT fine-tuning of the trained run into ``out`` (a run folder), then the int8 export of both
    (``export_options``: those of keras_mtl.deploy.export.export_run)."""
    epochs = settings.epochs or 2
    network = open_run(run_dir).network()
    data = prepare_data(config, tasks)
    tuned = qat_finetune(network, config, tasks, data, epochs)
    out.mkdir(parents=True, exist_ok=True)
    info = describe_run(tuned, tasks, config, output_dir=out)
    with fileio.atomic_path(out / "model.keras") as tmp:
        tuned.save(tmp)
    results = {}
    for task in tasks:
        metrics = evaluate_task(keras.Model(tuned.input, tuned.output[task.name]), task, data, config.training)
        results[task.name] = {
            "split": data.test[task.name].split,
            "metrics": metrics,
            "headline": {"name": task.headline, "value": metrics[task.headline]},
            "params": info["profile"]["task_paths"][task.name]["params"],
            "macs_per_second": info["profile"]["task_paths"][task.name]["macs_per_second"],
        }
    fileio.write_json(
        out / "metrics.json",
        {
            "tasks": results,
            "model": info["profile"]["total"],
            "compression": {"method": "qat", "epochs": epochs, "source_run": str(run_dir)},
            "output_dir": str(out),
        },
    )
    qat = export_run(out, out / "export", **export_options)
    ptq = export_run(run_dir, out / "ptq-export", **export_options)
    comparison = {
        task: {
            "headline": r["headline"],
            "float": ptq["tasks"][task]["float"][r["headline"]],
            "ptq_int8_streamed": ptq["tasks"][task]["int8_streamed"][r["headline"]],
            "qat_float": r["float"][r["headline"]],
            "qat_int8_streamed": r["int8_streamed"][r["headline"]],
        }
        for task, r in qat["tasks"].items()
    }
    metrics = read_metrics(out)
    metrics["compression"]["int8"] = comparison
    fileio.write_json(out / "metrics.json", metrics)
    return metrics
