"""Experiment tables: aggregation over seeds, and a resumable end-to-end run on the tiny preset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from keras_mtl.core import fileio
from keras_mtl.core.errors import ConfigError
from keras_mtl.studies import experiments

REPO = Path(__file__).resolve().parent.parent


def _fake_metrics(asc, sed):
    tasks = {}
    for name, value, metric in (("asc", asc, "accuracy"), ("sed", sed, "event_f1_macro")):
        if value is not None:
            tasks[name] = {"headline": {"name": metric, "value": value}}
    return {"tasks": tasks, "model": {"params": 109_900, "macs_per_second": 17_300_000}, "seconds": {"training": 10.0}}


def test_summary_gives_mean_and_std_over_seeds_beside_the_paper(tmp_path):
    experiment = experiments.get_experiment("strategies")
    rows = experiments.select_rows(experiment, ["single-asc", "soft"])
    for seed, (asc, sed) in enumerate([(0.70, 0.30), (0.74, 0.20)]):
        fileio.write_json(tmp_path / "rows" / "soft" / f"seed{seed}" / "metrics.json", _fake_metrics(asc, sed))
    fileio.write_json(tmp_path / "rows" / "single-asc" / "seed0" / "metrics.json", _fake_metrics(0.8, None))
    summary = experiments.summarize(experiment, tmp_path, rows, [0, 1])
    soft = summary["rows"][1]
    assert soft["tasks"]["asc"]["mean"] == pytest.approx(72.0) and soft["tasks"]["asc"]["std"] == pytest.approx(2.0)
    assert soft["tasks"]["sed"]["mean"] == pytest.approx(25.0)
    table = (tmp_path / "table.md").read_text()
    assert "| SoftMTL | 72.00 ± 2.00 | 25.00 ± 5.00 | 37.59 | 39.08 | +10.0 | - | - | - | 109.9k | 17.3M | 2 |" in table
    assert "| single-task ASC (CNN) | 80.00 | - | 53.31 | - | - | - | - | - |" in table
    assert (tmp_path / "results.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["seeds"] == [0, 1]


def test_balancing_summary_gives_relative_drops_ar_and_the_compute_against_the_single_task_models(tmp_path):
    experiment = experiments.get_experiment("balancing")
    rows = experiments.select_rows(experiment, ["single-asc", "single-sed", "fixed", "gradnorm"])
    runs = {"single-asc": (0.80, None), "single-sed": (None, 0.50), "fixed": (0.76, 0.30), "gradnorm": (0.82, 0.49)}
    for name, (asc, sed) in runs.items():
        metrics = _fake_metrics(asc, sed)
        metrics["model"]["macs_per_second"] = {"single-asc": 10e6, "single-sed": 30e6}.get(name, 20e6)
        fileio.write_json(tmp_path / "rows" / name / "seed0" / "metrics.json", metrics)
    summary = experiments.summarize(experiment, tmp_path, rows, [0])
    fixed, gradnorm = summary["rows"][2], summary["rows"][3]
    assert fixed["relative_drop"] == pytest.approx({"asc": 5.0, "sed": 40.0})
    assert fixed["ar"] == pytest.approx(40.0) and fixed["macs_vs_singles"] == pytest.approx(0.5)
    assert gradnorm["relative_drop"] == pytest.approx({"asc": -2.5, "sed": 2.0}) and gradnorm["ar"] == pytest.approx(
        2.0
    )
    assert "relative_drop" not in summary["rows"][0]
    table = (tmp_path / "table.md").read_text()
    assert "| SoftMTL, gradnorm | 82.00 | 49.00 | -2.5 | +2.0 | 2.0 | 50% |" in table


def test_unknown_experiment_and_row():
    with pytest.raises(ConfigError, match="unknown experiment 'magic'"):
        experiments.get_experiment("magic")
    with pytest.raises(ConfigError, match="no row"):
        experiments.select_rows(experiments.get_experiment("weighting"), ["fixed", "uncertainty"])


@pytest.mark.slow
def test_weighting_experiment_end_to_end_and_resume(tmp_path, tiny_env):
    env = tiny_env  # the session's synthetic data and feature cache
    out = tmp_path / "exp"
    command = [
        sys.executable,
        str(REPO / "scripts" / "experiment.py"),
        "weighting",
        "--preset",
        "tiny",
        "--seeds",
        "0",
        "--rows",
        "fixed,mfl",
        "--epochs",
        "2",
        "--output-dir",
        str(out),
    ]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("table.md", "results.json", "results.png", "weights.png"):
        assert (out / name).stat().st_size > 0, name
    finished = out / "rows" / "mfl" / "seed0" / "metrics.json"
    stamp = finished.stat().st_mtime_ns
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("done before, skipped") == 2
    assert finished.stat().st_mtime_ns == stamp
    assert "| MFL (focal task weighting) |" in (out / "table.md").read_text()


def test_balancing_experiments_list_single_task_models_and_every_method():
    from keras_mtl.studies.experiments import BALANCING, EXPERIMENTS
    from keras_mtl.training.weighting import WEIGHTINGS

    assert set(BALANCING) == set(WEIGHTINGS)
    for name, tasks in (("balancing", ["asc", "sed"]), ("balancing-speech", ["gc", "ac", "scr", "vad"])):
        rows = {row.name: row.settings for row in EXPERIMENTS[name].rows}
        assert [rows[f"single-{t}"]["tasks"] for t in tasks] == [[t] for t in tasks]
        assert all(rows[m] == {"tasks": tasks, "strategy": "soft", "weighting": m} for m in BALANCING)


def test_the_distill_experiment_distils_the_clip_tasks_alone_in_one_row():
    """board-distilled: every task from the default joint model; board-distilled-clip: the same teacher,
    the frame task's distillation weight 0 (SED distilled from the joint model measured a loss)."""
    rows = {row.name: row.settings for row in experiments.EXPERIMENTS["distill"].rows}
    assert rows["board-distilled"]["training"] == {"teachers": ["@default"]}
    clip = rows["board-distilled-clip"]
    assert clip["training"] == {"teachers": ["@default"], "distill_weight": {"asc": 1.0, "sed": 0.0}}
    assert {k: v for k, v in clip.items() if k != "training"} == rows["board"]
