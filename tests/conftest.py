"""Shared fixtures: a tiny synthetic corpus and one tiny trained run, each made once per test session."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from keras_mtl.data.synth.synthetic import SyntheticConfig, generate

TINY = SyntheticConfig(
    seed=3,
    asc_train_per_scene=2,
    asc_test_per_scene=1,
    sed_train=6,
    sed_weak=2,
    sed_unlabeled=2,
    sed_validation=3,
)


def pytest_collection_modifyitems(config, items):
    """The slow tests first, each group in its collection order: pytest-xdist hands tests out in this
    order, so the long end-to-end runs start early and the run ends on short tests, not on one
    five-minute test that one worker started last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def tiny_config() -> SyntheticConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Root folder holding tau22/ and desed/ written by the synthetic generator."""
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    generate(root, TINY, workers=1)
    return root


@pytest.fixture()
def isolated_dirs(tmp_path, monkeypatch):
    """Point data, cache and run folders of keras_mtl at a temporary place."""
    monkeypatch.setenv("KERAS_MTL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KERAS_MTL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def small_config(**changes) -> SyntheticConfig:
    return dataclasses.replace(TINY, **changes)


REPO = Path(__file__).resolve().parent.parent
TINY_RUN_ARGS = ("--preset", "tiny", "--task-set", "asc,sed", "--deterministic", "--seed", "3")


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    path: Path  # the run folder: read it, or copy it before changing it
    env: dict  # environment with the session's data and feature-cache folders
    stdout: str
    stderr: str


@pytest.fixture(scope="session", autouse=True)
def session_dirs(tmp_path_factory):
    """Synthetic data and the feature cache of this pytest process (each xdist worker has its own, so
    no two processes generate data into one folder), shared by its tests; never the checkout's."""
    root = tmp_path_factory.mktemp("shared")
    saved = {key: os.environ.get(key) for key in ("KERAS_MTL_DATA_DIR", "KERAS_MTL_CACHE_DIR")}
    os.environ["KERAS_MTL_DATA_DIR"], os.environ["KERAS_MTL_CACHE_DIR"] = str(root / "data"), str(root / "cache")
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_env(session_dirs) -> dict:
    """Environment whose synthetic data and feature cache are the session's (session_dirs)."""
    return dict(os.environ)


@contextlib.contextmanager
def _exclusive(path: Path):
    """An exclusive lock on ``path`` (fcntl.flock), held by one pytest process at a time."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _shared_folder(tmp_path_factory, worker_id: str) -> Path:
    """A folder common to every xdist worker of this pytest run (the workers' base folders' parent)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_env, worker_id) -> TrainedRun:
    """One tiny ASC+SED run, trained once per pytest run through ``scripts/train.py`` (TINY_RUN_ARGS) and
    exported by ``scripts/export.py`` into its export/ folder, shared by the CLI tests (train, evaluate,
    export, predict, firmware, compress) of every xdist worker: the first worker that needs it makes
    it while the others wait (a lock), with that worker's data and feature cache (its ``env``)."""
    shared = _shared_folder(tmp_path_factory, worker_id) / "tiny-run"
    shared.mkdir(exist_ok=True)
    out, record = shared / "run", shared / "made.json"
    with _exclusive(shared / "lock"):
        if not record.is_file():
            result = subprocess.run(
                [sys.executable, str(REPO / "scripts" / "train.py"), *TINY_RUN_ARGS, "--output-dir", str(out)],
                capture_output=True,
                text=True,
                env=tiny_env,
                timeout=900,
            )
            assert result.returncode == 0, result.stderr[-3000:]
            export = subprocess.run(
                [sys.executable, str(REPO / "scripts" / "export.py"), str(out), "--calibration-clips", "4"],
                capture_output=True,
                text=True,
                env=tiny_env,
                timeout=600,
            )
            assert export.returncode == 0, export.stderr[-3000:]
            record.write_text(json.dumps({"env": tiny_env, "stdout": result.stdout, "stderr": result.stderr}))
        made = json.loads(record.read_text())
    return TrainedRun(out, made["env"], made["stdout"], made["stderr"])


@pytest.fixture(scope="session")
def exported(tiny_run):
    """The shared tiny ASC+SED run's export/ folder (scripts/export.py, made with the run)."""
    return tiny_run.path / "export"


def run_cli(argv: list[str], env: dict[str, str] | None = None) -> SimpleNamespace:
    """``keras-mtl ARGV`` through its console entry point in this process, with ``env`` set meanwhile:
    the exit code, stdout and stderr a user sees (``error:`` lines included), without the ~6 s a new
    Python spends importing TensorFlow. For the commands' refusals; end-to-end runs use subprocesses.
    stderr here is Python's sys.stderr only: not TensorFlow's C++ lines on fd 2, not logging output."""
    from keras_mtl.cli.main import run

    out, err = io.StringIO(), io.StringIO()
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run([str(a) for a in argv])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def keras_mtl_command() -> list[str]:
    """The installed ``keras-mtl`` console command of this interpreter's environment."""
    return [str(Path(sys.executable).parent / "keras-mtl")]


os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
