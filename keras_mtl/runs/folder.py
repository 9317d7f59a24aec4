"""TODO docstring."""
from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from keras_mtl.models import profiling
from keras_mtl.core import fileio
from keras_mtl.runs.config import RunConfig
from keras_mtl.core.errors import ConfigError
from keras_mtl.core.paths import REPO_ROOT, in_checkout


def default_output_dir(config: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = REPO_ROOT / "runs" if in_checkout() else Path.cwd() / "runs"
    return base / f"{stamp}-{'+'.join(config.tasks)}-{config.strategy}"


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


def describe_run(network, tasks, config: RunConfig, output_dir: Path | None) -> dict:
    """Summary and profile; written to the run folder when there is one."""
    lines = []
    network.summary(line_length=110, print_fn=lambda line, *args, **kwargs: lines.append(line))
    summary = "\n".join(lines)
    layers = profiling.profile(network, config.frontend)
    table = profiling.format_table(layers)
    prof = profiling.summarize(layers, [t.name for t in tasks])
    if output_dir is not None:
        fileio.write_text(output_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        fileio.write_text(output_dir / "model_summary.txt", summary + "\n")
        fileio.write_text(output_dir / "profile.txt", table + "\n")
    return {"summary": summary, "profile_table": table, "profile": prof}
