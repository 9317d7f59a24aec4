"""Resume after kill -9: the run continues from its last epoch checkpoint and finishes."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keras_mtl.runs.folder import open_run
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "scripts" / "train.py"


@pytest.fixture()
def env(tiny_env):
    """The session's synthetic data and feature cache."""
    return tiny_env


def _final_artifacts_are_whole(run: Path):
    """Every file under its final name is complete (temporary files may be left by the kill)."""
    if (run / "history.csv").exists():
        list(csv.DictReader((run / "history.csv").open()))
    for name in ("metrics.json",):
        if (run / name).exists():
            json.loads((run / name).read_text())
    latest = run / "checkpoint" / "latest"
    if latest.exists():
        name = latest.read_text().strip()
        folder = run / "checkpoint" / name
        try:
            json.loads((folder / "resume.json").read_text())
            assert (folder / "state.index").stat().st_size > 0
        except FileNotFoundError:
            # A checkpoint is pruned only once ``latest`` names a newer one: read while it moved on.
            assert latest.read_text().strip() != name, f"checkpoint/latest names {name}, which is incomplete"


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy",
    [
        # the EMA teacher, DWA's loss history, epochs 5-6 frozen at the mixture's statistics (killed before,
        # at or in them) and the stage's weight average, whose running mean --resume carries on. (What a
        # step-level balancer keeps, e.g. uncertainty's learnt log-variances and their optimizer slots, is
        # restored in process for every method: test_balancing.py)
        ["--strategy", "cross-soft", "--weighting", "dwa", "--batch-norm", "calibrated"],
        ["--strategy", "freeze", "--order", "sed,asc"],  # two phases, the second with a fresh optimizer
    ],
)
def test_killed_run_resumes_and_finishes(tmp_path, strategy, env):
    args = ["--preset", "tiny", "--epochs", "6", "--deterministic", *strategy]
    if "calibrated" in strategy:
        (tmp_path / "average.yaml").write_text("training:\n  bn_calibration_average: true\n")
        args += ["--config", str(tmp_path / "average.yaml")]
    reference = tmp_path / "reference"
    done = subprocess.run(
        [sys.executable, str(TRAIN), *args, "--output-dir", str(reference)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, str(TRAIN), *args, "--output-dir", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = run / "checkpoint" / "latest"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        _final_artifacts_are_whole(run)
        if latest.exists() and int(latest.read_text().strip().split("-")[1]) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    _final_artifacts_are_whole(run)
    assert not (run / "metrics.json").exists()
    epochs_done = int(latest.read_text().strip().split("-")[1])

    resumed = subprocess.run(
        [sys.executable, str(TRAIN), "--resume", str(run)], capture_output=True, text=True, env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"after epoch {epochs_done}" in resumed.stderr
    rows = list(csv.DictReader((run / "history.csv").open()))
    total_epochs = 12 if "freeze" in strategy else 6
    assert [int(r["epoch"]) for r in rows] == list(range(1, total_epochs + 1))
    metrics = json.loads((run / "metrics.json").read_text())
    expected = json.loads((reference / "metrics.json").read_text())
    assert metrics["epochs"] == expected["epochs"] == total_epochs
    assert (
        metrics["weight_average_epochs"] == expected["weight_average_epochs"] == (2 if "calibrated" in strategy else 0)
    )
    # the same training: the resumed run skips the finished epochs' batches, restores weights, optimizer,
    # teacher and loss weights, and the tiny model has no dropout, so it ends where the uninterrupted run does
    reference_rows = list(csv.DictReader((reference / "history.csv").open()))
    for column in ("loss", "val_asc_accuracy", "val_sed_frame_f1"):
        assert float(rows[-1][column]) == pytest.approx(float(reference_rows[-1][column]), rel=1e-4, abs=1e-6), column

    again = run_cli(["train", "--resume", run], env)  # a refusal before training: in this process
    assert again.returncode == 2 and "has finished" in again.stderr

    # killed after the last epoch's checkpoint, in the evaluation: --resume trains nothing and keeps the
    # checkpoint's network (it once saved a freshly built one over the trained model.keras), FreezeMTL's
    # frozen layers as they were
    (run / "metrics.json").unlink()
    (run / "model.keras").unlink()
    after_kill = subprocess.run(
        [sys.executable, str(TRAIN), "--resume", str(run)], capture_output=True, text=True, env=env, timeout=600
    )
    assert after_kill.returncode == 0, after_kill.stderr[-3000:]
    assert "network restored from" in after_kill.stderr
    again_metrics = json.loads((run / "metrics.json").read_text())
    assert again_metrics["weight_average_epochs"] == metrics["weight_average_epochs"]
    for task, key in (("asc", "accuracy"), ("sed", "frame_roc_auc")):
        ours, theirs = again_metrics["tasks"][task]["metrics"], metrics["tasks"][task]["metrics"]
        assert ours[key] == pytest.approx(theirs[key], abs=1e-6), task
    assert [int(r["epoch"]) for r in csv.DictReader((run / "history.csv").open())] == list(range(1, total_epochs + 1))
    saved, uninterrupted = open_run(run).network(), open_run(reference).network()
    assert len(saved.trainable_weights) == len(uninterrupted.trainable_weights)
