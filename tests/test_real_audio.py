"""Real recordings from ../shared/data/real-mini through the readers, front end and train.py.

Skips cleanly when the folder is absent. Nothing is copied into the repository: the test
builds a TAU22-layout folder of symbolic links in a temporary directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from keras_mtl.data.audio import fix_length, load_audio
from keras_mtl.features.logmel import FrontEndConfig, LogMel

REAL_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-mini"
pytestmark = pytest.mark.skipif(not REAL_MINI.is_dir(), reason="../shared/data/real-mini is absent")


def test_odd_rate_short_clips_resample_and_featurise():
    cfg = FrontEndConfig()
    logmel = LogMel(cfg)
    clips = sorted((REAL_MINI / "fsdd" / "recordings").glob("*.wav"))[:20]
    assert clips
    for path in clips:
        info = sf.info(path)
        audio = load_audio(path, cfg.sample_rate)
        assert info.samplerate == 8000
        assert abs(len(audio) - 2 * info.frames) <= 2
        features = logmel(fix_length(audio, cfg.sample_rate))
        assert features.shape == (101, 128) and np.isfinite(features).all()


@pytest.mark.slow
def test_train_on_a_tau22_layout_of_real_backgrounds(tmp_path):
    from tests.test_train_cli import run_train

    scene_of = {"cafe": "shopping_mall", "street": "street_traffic", "train": "metro"}
    root = tmp_path / "tau22"
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    rows = {"train": [], "test": []}
    for folder, scene in scene_of.items():
        clips = sorted((REAL_MINI / "backgrounds" / "clips_1s" / folder).glob("*.wav"))[:8]
        for k, clip in enumerate(clips):
            name = f"audio/{scene}-real-{k}-0-a.wav"
            (root / name).symlink_to(clip)
            rows["train" if k < 6 else "test"].append(f"{name}\t{scene}")
    (root / "meta.csv").write_text("filename\tscene_label\tidentifier\tsource_label\n")
    for split, file in (("train", "fold1_train.csv"), ("test", "fold1_evaluate.csv")):
        (root / "evaluation_setup" / file).write_text("filename\tscene_label\n" + "\n".join(rows[split]) + "\n")
    out = tmp_path / "run"
    result = run_train(
        "--preset", "tiny", "--task-set", "asc", "--data-root", str(root), "--output-dir", str(out), env_dirs=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks"]["asc"]["metrics"]["n_clips"] == len(rows["test"])


@pytest.mark.slow
def test_fsdd_manifest_with_the_datasets_own_split(tmp_path):
    """Three digits of FSDD (takes 0-4 test, 5-49 train) through make_manifest.py and train.py."""
    import subprocess
    import sys

    from tests.test_train_cli import REPO, run_train

    folder = tmp_path / "fsdd"
    folder.mkdir()
    for clip in sorted((REAL_MINI / "fsdd" / "recordings").glob("[0-2]_*.wav")):
        (folder / clip.name).symlink_to(clip)
    manifest = tmp_path / "fsdd.csv"
    made = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/make_manifest.py"),
            str(folder),
            str(manifest),
            "--label",
            r"^(\d+)_",
            "--test",
            r"_[0-4]\.wav$",
        ],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    out = tmp_path / "run"
    result = run_train(
        "--preset",
        "seed001",
        "--task-set",
        "digits",
        "--task",
        f"digits=clip:{manifest}",
        "--epochs",
        "8",
        "--output-dir",
        str(out),
        env_dirs=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())["tasks"]["digits"]
    assert metrics["metrics"]["n_clips"] == 3 * 6 * 5  # 3 digits x 6 speakers x takes 0-4
    assert metrics["metrics"]["accuracy"] > 0.8
