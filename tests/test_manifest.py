"""User-defined tasks from manifests: reading, splits, errors, and train.py end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from keras_mtl.core.errors import ConfigError, DataError
from keras_mtl.data.readers.manifest import build_clip_manifest, read_clip_manifest, read_frame_manifest
from keras_mtl.tasks.registry import manifest_task
from tests.test_train_cli import assert_one_line_error, run_train


def _tone(path, freq, seconds=0.5, rate=8000, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(len(t)) * 0.01
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t) + noise, rate)


@pytest.fixture()
def tone_folder(tmp_path):
    folder = tmp_path / "tones"
    for label, freq in (("low", 300), ("high", 2500)):
        for k in range(8):
            _tone(folder / label / f"{label}_{k}.wav", freq * (1 + 0.02 * k), seconds=0.3 + 0.05 * k, seed=k)
    return folder


def test_build_and_read_clip_manifest(tone_folder, tmp_path):
    out = tmp_path / "m.csv"
    assert build_clip_manifest(tone_folder, out, r"^(\w+)/", r"_[0-1]\.wav$") == 16
    items = read_clip_manifest(out)
    assert len(items["train"]) == 12 and len(items["test"]) == 4
    assert {i.label for i in items["test"]} == {"low", "high"}
    task = manifest_task("tones", "clip", out)
    assert task.classes == ("high", "low") and task.clip_seconds == pytest.approx(0.7)


def test_hash_split_without_split_column(tone_folder, tmp_path):
    out = tmp_path / "m.csv"
    build_clip_manifest(tone_folder, out, r"^(\w+)/")
    first, second = read_clip_manifest(out), read_clip_manifest(out)
    assert [i.key for i in first["test"]] == [i.key for i in second["test"]]
    assert len(first["train"]) + len(first["test"]) == 16


def test_manifest_errors_name_file_and_line(tone_folder, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,label\ntones/low/low_0.wav,low\nmissing.wav,low\n")
    with pytest.raises(DataError, match=r"bad\.csv:3: audio file .*missing\.wav not found"):
        read_clip_manifest(bad)
    bad.write_text("file,label\nx.wav,low\n")
    with pytest.raises(DataError, match=r"bad\.csv:1: missing column\(s\) filename"):
        read_clip_manifest(bad)
    bad.write_text("filename,label,split\ntones/low/low_0.wav,low,holdout\n")
    with pytest.raises(DataError, match=r"bad\.csv:2: unknown split 'holdout'"):
        read_clip_manifest(bad)
    only_train = tmp_path / "train_only.csv"
    only_train.write_text("filename,label,split\ntones/low/low_0.wav,low,train\ntones/high/high_0.wav,high,train\n")
    with pytest.raises(ConfigError, match="no test clips"):
        manifest_task("x", "clip", only_train)


def test_frame_manifest(tmp_path):
    for k in range(4):
        _tone(tmp_path / f"c{k}.wav", 500, seconds=2.0, rate=16000)
    tsv = tmp_path / "strong.tsv"
    tsv.write_text(
        "filename\tonset\toffset\tevent_label\tsplit\n"
        "c0.wav\t0.1\t0.9\tbeep\ttrain\nc1.wav\t\t\t\ttrain\nc2.wav\t0.5\t1.5\tbeep\ttest\n"
        "c3.wav\t0.2\t0.4\tbuzz\ttest\n"
    )
    items = read_frame_manifest(tsv)
    assert [i.key for i in items["train"]] == ["c0.wav", "c1.wav"]
    assert items["train"][1].events == () and items["train"][0].duration == pytest.approx(2.0)
    task = manifest_task("beeps", "frame", tsv)
    assert task.level == "frame" and task.classes == ("beep", "buzz") and task.clip_seconds == pytest.approx(2.0)
    tsv.write_text("filename\tonset\toffset\tevent_label\nc0.wav\t0.9\t0.1\tbeep\n")
    with pytest.raises(DataError, match=r"strong\.tsv:2: onset 0\.9 is after offset 0\.1"):
        read_frame_manifest(tsv)


@pytest.mark.slow
def test_train_with_a_manifest_task(tone_folder, tmp_path):
    manifest = tmp_path / "m.csv"
    build_clip_manifest(tone_folder, manifest, r"^(\w+)/", r"_[0-1]\.wav$")
    out = tmp_path / "run"
    result = run_train(
        "--preset",
        "tiny",
        "--task-set",
        "tones",
        "--task",
        f"tones=clip:{manifest}",
        "--output-dir",
        str(out),
        env_dirs=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks"]["tones"]["metrics"]["n_clips"] == 4
    assert not (tmp_path / "data").exists()  # no synthetic data needed


def test_manifest_task_errors_in_cli(tone_folder, tmp_path):
    missing = tmp_path / "nope.csv"
    assert_one_line_error(
        run_train("--task-set", "t", "--task", f"t=clip:{missing}", "--dry-run", env_dirs=tmp_path),
        "nope.csv",
        "not found",
    )
    assert_one_line_error(
        run_train("--task-set", "asc", "--task", "t=blob:x.csv", "--dry-run", env_dirs=tmp_path),
        "unknown level or layout 'blob'",
    )
