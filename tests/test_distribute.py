"""tf.distribute: two workers on localhost (two processes, TF_CONFIG on loopback ports) end with the
same weights, student and mean teacher, although they start from different seeds and read
different batches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_mtl.core.backend import tf

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "scripts" / "train.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_workers(tmp_path: Path, data_dir: str, *args: str) -> Path:
    ports = [_free_port(), _free_port()]
    out = tmp_path / "run"
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        env = dict(
            os.environ,
            TF_CONFIG=json.dumps(config),
            KERAS_MTL_DATA_DIR=data_dir,  # generated before by the session's tiny run: read only
            KERAS_MTL_CACHE_DIR=str(tmp_path / f"cache{index}"),
        )
        # different seeds: equal weights at the end need the initial broadcast and synchronised steps
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(TRAIN),
                    "--preset",
                    "tiny",
                    "--distribute",
                    "multi-worker",
                    "--seed",
                    str(7 + index),
                    "--output-dir",
                    str(out),
                    *args,
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    return out


def _checkpoint_values(run: Path) -> dict:
    folder = run / "checkpoint"
    latest = (folder / "latest").read_text().strip()
    reader = tf.train.load_checkpoint(str(folder / latest / "state"))
    return {
        name: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(str(folder / latest / "state"))
        if "network" in name or "teacher" in name
    }


@pytest.mark.slow
# cross-soft is SoftMTL plus the EMA teacher; with PCGrad, a gradient-level balancing method
@pytest.mark.parametrize("strategy", ["cross-soft --weighting pcgrad", "hard"])
def test_two_workers_hold_identical_student_and_teacher(tmp_path, strategy, tiny_run):
    out = _two_workers(tmp_path, tiny_run.env["KERAS_MTL_DATA_DIR"], "--strategy", *strategy.split())
    chief, worker = _checkpoint_values(out), _checkpoint_values(out / "worker-1")
    assert any("teacher" in name for name in chief), "the mean teacher of SED is part of the run"
    assert set(chief) == set(worker) and len(chief) > 10
    for name in chief:
        np.testing.assert_array_equal(chief[name], worker[name], err_msg=name)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mean_teacher"] == ["sed"]
    # the default for tasks trained together: both workers froze the workers' mean mixture statistics
    assert metrics["batch_norm"] == "calibrated"
