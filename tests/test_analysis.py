"""Task-relation analysis (seed 004): statistics, curve fit, correlation/regression, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from keras_mtl.data.items import AudioItem, Event
from keras_mtl.studies import analysis

REPO = Path(__file__).resolve().parent.parent


def test_entropy_and_kurtosis_of_known_distributions():
    assert analysis.label_entropy([5, 5, 5, 5]) == pytest.approx(2.0)
    assert analysis.label_entropy([3, 1]) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert analysis.label_entropy([7, 0, 0]) == 0.0
    rng = np.random.default_rng(0)
    assert analysis.label_kurtosis(rng.standard_normal(200_000)) == pytest.approx(0.0, abs=0.05)
    assert analysis.label_kurtosis(rng.uniform(size=200_000)) == pytest.approx(-1.2, abs=0.05)
    assert analysis.label_kurtosis([1, 1]) == 0.0 and analysis.label_kurtosis([0, 2]) == pytest.approx(-2.0)


def test_log_curve_fit_recovers_its_parameters():
    steps = np.arange(1, 401, dtype=float)
    losses = analysis.log_curve(steps, -0.4, 2.5, 0.05, 1.0)
    fit = analysis.fit_log_curve(steps, losses)
    assert fit["rmse"] < 1e-4
    np.testing.assert_allclose([fit["a"], fit["b"], fit["c"], fit["d"]], [-0.4, 2.5, 0.05, 1.0], rtol=1e-3)
    noisy = losses + np.random.default_rng(1).normal(0, 0.01, steps.size)
    assert analysis.fit_log_curve(steps, noisy)["a"] == pytest.approx(-0.4, rel=0.1)
    gradients = analysis.curve_gradients(2.0 - 0.003 * steps)
    assert all(v == pytest.approx(-0.003) for v in gradients.values()) and len(gradients) == 5


def test_overlap_share_and_snr():
    items = [
        AudioItem(Path("a.wav"), "a", events=(Event(0.0, 2.0, "x"), Event(1.0, 3.0, "y"))),
        AudioItem(Path("b.wav"), "b", events=(Event(0.0, 1.0, "x"),)),
    ]
    assert analysis.overlap_share(items) == pytest.approx(1.0 / 4.0, abs=0.01)  # 1 s of 4 s active
    quiet_loud = np.log(np.concatenate([np.full((50, 8), 1e-3), np.full((50, 8), 1e-1)]))
    assert analysis.snr_estimate([quiet_loud]) == pytest.approx(20.0, abs=0.01)


def test_correlation_and_regression_find_a_planted_relation():
    rng = np.random.default_rng(0)
    n = 60
    informative = rng.standard_normal(n)
    noise = rng.standard_normal(n)
    gain = 3.0 * informative + 0.3 * rng.standard_normal(n)
    table = pd.DataFrame({"main": ["t"] * n, "informative": informative, "noise": noise, "constant": 1.0, "gain": gain})
    corr = analysis.correlations(table)
    assert list(corr["feature"]) == ["informative", "noise"]  # constant and text columns are left out
    assert corr.loc[0, "r"] > 0.95 and corr.loc[0, "p"] < 1e-10 and abs(corr.loc[1, "r"]) < 0.3
    result = analysis.gain_classifier(table, ["informative", "noise"])
    assert result["cv_accuracy"] > 0.85 and result["folds"] == 5
    assert result["coefficients"]["informative"] > abs(result["coefficients"]["noise"])
    one_class = table.assign(gain=1.0)
    assert "note" in analysis.gain_classifier(one_class, ["informative"])


def test_pair_table_rows_are_ordered_pairs_with_ratios():
    measurements = {"a": {"clips": 10, "snr_db": 5.0}, "b": {"clips": 20, "snr_db": 10.0}}
    table = analysis.pair_table(["a", "b"], measurements, {"a": 0.5, "b": 0.8}, {("a", "b"): {"a": 0.6, "b": 0.7}})
    rows = {(r.main, r.auxiliary): r for r in table.itertuples()}
    assert rows[("a", "b")].gain == pytest.approx(10.0) and rows[("b", "a")].gain == pytest.approx(-10.0)
    assert rows[("a", "b")].ratio_clips == pytest.approx(0.5) and rows[("b", "a")].aux_snr_db == 5.0


@pytest.mark.slow
def test_analyze_tasks_cli_end_to_end(tmp_path, tiny_env):
    env = tiny_env  # the session's synthetic data and feature cache
    out = tmp_path / "analysis"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "analyze_tasks.py"),
            "--tasks",
            "asc,gc,vad",
            "--preset",
            "tiny",
            "--epochs",
            "2",
            "--output-dir",
            str(out),
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in (
        "measurements.csv",
        "gains.csv",
        "correlations.csv",
        "regression.json",
        "efficiency.csv",
        "report.md",
        "correlations.png",
        "learning_curves.png",
    ):
        assert (out / name).stat().st_size > 0, name
    gains = pd.read_csv(out / "gains.csv")
    assert len(gains) == 6 and set(gains["main"]) == {"asc", "gc", "vad"}
    measured = pd.read_csv(out / "measurements.csv").set_index("task")
    assert measured.loc["asc", "labels"] == 10 and measured.loc["vad", "labelled_frames"] > 0
    assert measured.loc["asc", "entropy"] > measured.loc["gc", "entropy"] > 0
    assert (out / "runs" / "single-asc" / "batch_loss.csv").is_file()
    efficiency = pd.read_csv(out / "efficiency.csv")
    assert efficiency.loc[0, "params"] < efficiency.loc[2, "params"]  # shared encoder: fewer than the three
    assert (efficiency["int8_latency_ms"] > 0).all() and (efficiency["int8_flatbuffer_bytes"] > 0).all()
    assert efficiency.loc[2, "int8_flatbuffer_bytes"] == pytest.approx(
        3 * efficiency.loc[1, "int8_flatbuffer_bytes"], abs=3
    )
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["pairs"]) == {"asc-gc", "asc-vad", "gc-vad"}


def test_reuse_takes_matching_synergy_runs_only(tmp_path):
    import yaml

    from keras_mtl.cli import common as cli
    from keras_mtl.studies import synergy

    base = cli.base_config("tiny", None, 2, None)
    synergy_dir = tmp_path / "synergy"
    for job in (
        synergy.Job("single-gc", "single", ("gc",), {}),
        synergy.Job("pair-gc-vad-k2", "pair", ("gc", "vad"), {"shared_blocks": 2}),
    ):
        config = synergy.job_config(base, job, synergy_dir)
        folder = synergy_dir / "runs" / job.name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
        (folder / "metrics.json").write_text("{}")
    jobs = {job.name: job for job in analysis.analysis_jobs(["gc", "vad"])}
    out = tmp_path / "analysis"
    found = {
        name: analysis.matching_run(job, synergy.job_config(base, job, out), synergy_dir) for name, job in jobs.items()
    }
    assert found == {
        "single-gc": synergy_dir / "runs" / "single-gc",
        "single-vad": None,
        "pair-gc-vad": synergy_dir / "runs" / "pair-gc-vad-k2",
        "all": None,
    }
    other = cli.base_config("tiny", None, 3, None)  # other epochs: not the same experiment
    assert (
        analysis.matching_run(jobs["single-gc"], synergy.job_config(other, jobs["single-gc"], out), synergy_dir) is None
    )


def test_event_relation_and_the_synthetic_clips_with_shared_events():
    relation = analysis.EventRelation({"park": ("Dog", "Cat"), "street": ("Dog", "Speech"), "mall": ("Dishes",)})
    assert relation.shared_events == {"Dog"} and relation.unique_events == {"Cat", "Speech", "Dishes"}
    assert relation.scenes_with_unique_events == ["mall", "park", "street"]
    assert analysis.EventRelation({"a": ("x",), "b": ("x",)}).scenes_with_unique_events == []

    from keras_mtl.data.synth.synthetic import SyntheticConfig, plan_all

    config = SyntheticConfig(
        asc_train_per_scene=6, asc_test_per_scene=2, sed_train=4, sed_validation=2, sed_weak=2, sed_unlabeled=2
    )
    relation, left_out = analysis.synthetic_overlap(config)
    plans = {p["file"]: p for p in plan_all(config)["asc_train"]}
    assert left_out and set(left_out) < set(plans)  # some clips are kept: those without a shared event
    for name, plan in plans.items():
        assert (name in left_out) == any(e["label"] in relation.shared_events for e in plan["events"])


def test_overlap_rows_compare_scene_groups():
    relation = analysis.EventRelation({"park": ("Dog",), "street": ("Dog",), "mall": ("Dishes",)})

    def run(accuracy, per_scene, sed=None):
        tasks = {"asc": {"metrics": {"accuracy": accuracy, "class_accuracy": per_scene}}}
        if sed is not None:
            tasks["sed"] = {"metrics": {"event_f1_macro": sed}}
        return {"tasks": tasks}

    metrics = {
        "single-asc": run(0.5, {"park": 0.4, "street": 0.6, "mall": 0.5}),
        "pair-asc-sed": run(0.6, {"park": 0.5, "street": 0.5, "mall": 0.8}, 0.3),
        "overlap-single-asc": run(0.4, {"park": 0.2, "street": 0.4, "mall": 0.6}),
        "overlap-pair-asc-sed": run(0.45, {"park": 0.3, "street": 0.3, "mall": 0.75}, 0.25),
    }
    rows = analysis.overlap_rows(relation, metrics, clips=30, left_out=12)
    assert [r["model"] for r in rows] == ["ASC alone", "ASC + SED"] * 2
    assert rows[1]["scenes with a unique event"] == pytest.approx(80.0)
    assert rows[0]["scenes sharing all their events"] == pytest.approx(50.0)
    assert rows[3]["sed event f1"] == pytest.approx(25.0) and math.isnan(rows[2]["sed event f1"])
    assert rows[2]["training data"].startswith("12 of 30")


def test_exclude_train_leaves_out_listed_clips_and_names_a_bad_line(tmp_path):
    from keras_mtl.core.errors import DataError
    from keras_mtl.runs.inputs import exclude_items

    items = [AudioItem(path=tmp_path / "audio" / f"{k}.wav", key=str(k), label="a") for k in range(3)]
    listing = tmp_path / "leave_out.txt"
    listing.write_text("# clips with a shared event\naudio/1.wav\n\n")
    assert [i.key for i in exclude_items(items, tmp_path, listing)] == ["0", "2"]
    listing.write_text("audio/1.wav\naudio/9.wav\n")
    with pytest.raises(DataError, match=r"leave_out.txt, line 2: 'audio/9.wav' is not a clip"):
        exclude_items(items, tmp_path, listing)
    listing.write_text("audio/0.wav\naudio/1.wav\naudio/2.wav\n")
    with pytest.raises(DataError, match="leaves no clip"):
        exclude_items(items, tmp_path, listing)
