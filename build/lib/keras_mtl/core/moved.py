"""The old import paths of modules that moved into subpackages (0.1 layout), kept working with a
DeprecationWarning so user scripts written against them do not break."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    f"keras_mtl.{old}": f"keras_mtl.{new}"
    for old, new in {
        "agreement": "deploy.agreement",
        "analysis": "studies.analysis",
        "architectures": "models.architectures",
        "backend": "core.backend",
        "c_arrays": "deploy.c_arrays",
        "config": "runs.config",
        "cp_mobile": "models.cp_mobile",
        "download": "data.download",
        "errors": "core.errors",
        "experiments": "studies.experiments",
        "export": "deploy.export",
        "fileio": "core.fileio",
        "firmware": "deploy.firmware",
        "metrics": "tasks.metrics",
        "profiling": "models.profiling",
        "reporting": "core.reporting",
        "strategies": "training.strategies",
        "synergy": "studies.synergy",
        "weighting": "training.weighting",
    }.items()
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``keras_mtl.<old>`` to the module now at its new path (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} has moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
