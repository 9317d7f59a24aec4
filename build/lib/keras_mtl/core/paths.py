"""Where a checkout keeps generated data, the feature cache and run folders (overridable by environment)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def in_checkout() -> bool:
    """Whether the package runs from a source checkout (then data and runs go beside it)."""
    return (REPO_ROOT / "datasets").is_dir() and (REPO_ROOT / "keras_mtl").is_dir()


def default_data_dir() -> Path:
    """Where the built-in synthetic data is generated."""
    if os.environ.get("KERAS_MTL_DATA_DIR"):
        return Path(os.environ["KERAS_MTL_DATA_DIR"])
    return REPO_ROOT / "datasets" / "synthetic" if in_checkout() else Path.home() / ".cache" / "keras_mtl" / "synthetic"


def default_cache_dir() -> Path:
    """Where log-mel features are cached."""
    if os.environ.get("KERAS_MTL_CACHE_DIR"):
        return Path(os.environ["KERAS_MTL_CACHE_DIR"])
    return (
        REPO_ROOT / "datasets" / ".cache" / "features"
        if in_checkout()
        else Path.home() / ".cache" / "keras_mtl" / "features"
    )


def runs_dir() -> Path:
    """Where run folders go by default: ``runs/`` in a checkout, else in the working directory."""
    return REPO_ROOT / "runs" if in_checkout() else Path.cwd() / "runs"
