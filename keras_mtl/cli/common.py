"""Shared command-line plumbing: logging setup and one-line errors for user mistakes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from keras_mtl.core.errors import UserError


def add_logging_options(parser) -> None:
    """-v/--verbose and -q/--quiet, read by setup_logging."""
    parser.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("matplotlib", "absl", "h5py", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def preset_names() -> list[str]:
    """The built-in presets (keras_mtl/runs/presets/*.yaml), read without importing TensorFlow."""
    from importlib import resources

    folder = resources.files("keras_mtl.runs") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def run_main(main: Callable[[], int | None]) -> None:
    """Call ``main``; a UserError, or an OSError about a file (read-only, no permission, no space),
    becomes ``error: <message>`` on stderr and exit code 2."""
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a file the command could not read or write: name it, no traceback
        if exc.filename is None:
            raise
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def parse_task_values(text: str, what: str, cast=str) -> dict | object:
    """'64' -> 64 (all tasks); 'asc=64,sed=16' -> {'asc': 64, 'sed': 16}."""
    if "=" not in text:
        return cast(text)
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise UserError(f"{what}: expected task=value pairs, got {part!r}")
        key, value = part.split("=", 1)
        out[key.strip().lower()] = cast(value.strip())
    return out


def parse_data_roots(values: list[str]) -> str | dict:
    """``--data-root`` values: one folder for all tasks, or task=DIR for each task."""
    roots = [parse_task_values(value, "--data-root") for value in values]
    if len(roots) == 1 and isinstance(roots[0], str):
        return roots[0]
    if all(isinstance(root, dict) for root in roots):
        return {key: value for root in roots for key, value in root.items()}
    raise UserError("--data-root: give either one folder, or task=DIR for each task")


def base_config(
    preset: str, config_path: str | None = None, epochs: int | None = None, data_roots: list[str] | None = None
) -> dict:
    """The configuration every run of an experiment starts from: a preset, a YAML on top, epochs, data roots."""
    from keras_mtl.runs import config as run_config

    base = run_config.load_preset(preset)
    if config_path:
        # each row's task set picks its entry when it is built: the preset's less what the user's YAML
        # decides for that set, then the YAML's own entry, as `train` resolves them
        base = run_config.combine_task_sets(base, run_config.load_yaml(config_path))
    base = run_config.merge(base, {"preset": preset})
    if epochs is not None:  # the command line's epochs win over every task-set entry too
        base = run_config.combine_task_sets(base, {"training": {"epochs": epochs}})
    if data_roots:
        base = run_config.merge(base, {"data_root": parse_data_roots(data_roots)})
    return base
