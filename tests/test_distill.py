"""Knowledge distillation (issue 29): the losses, the teacher-outputs folder, teachers that cannot
teach refused before training, and a student that learns its teacher's outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from keras_mtl.core.backend import keras, tf
from keras_mtl.models.mtl import ModelConfig, build_model
from keras_mtl.tasks.registry import parse_task_set
from keras_mtl.training import distill
from keras_mtl.training.losses import distillation_loss, softened_kl
from keras_mtl.training.strategies import SoftMTL, make_optimizer
from tests.conftest import run_cli

SMALL = ModelConfig(channels=(4, 8), pools=((2, 16), (2, 8)), gru_units=8, dropout=0.0, head_dropout=0.0)


def test_the_distillation_losses_equal_a_hand_computation():
    teacher = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    student = np.array([[0.5, 0.3, 0.2], [0.3, 0.3, 0.4]], np.float32)
    for temperature in (1.0, 2.0, 4.0):
        expected = 0.0
        for t, s in zip(teacher, student):
            soft_t = t ** (1 / temperature) / np.sum(t ** (1 / temperature))  # softmax(log p / T)
            soft_s = s ** (1 / temperature) / np.sum(s ** (1 / temperature))
            expected += np.sum(soft_t * np.log(soft_t / soft_s))
        expected = temperature**2 * expected / len(teacher)
        assert float(softened_kl(teacher, student, temperature)) == pytest.approx(expected, rel=1e-4)
    assert float(softened_kl(teacher, teacher, 3.0)) == pytest.approx(0.0, abs=1e-6)
    asc, sed = parse_task_set("asc,sed")
    assert float(distillation_loss(asc, teacher, student, 2.0)) == pytest.approx(
        float(softened_kl(teacher, student, 2.0))
    )
    frames_t = np.array([[[0.9, 0.2], [0.4, 0.0]]], np.float32)  # (1 clip, 2 frames, 2 classes)
    frames_s = np.array([[[0.6, 0.3], [0.5, 0.1]]], np.float32)
    eps = 1e-7
    clipped = np.clip(frames_s, eps, 1 - eps)
    bce = -np.mean(frames_t * np.log(clipped) + (1 - frames_t) * np.log(1 - clipped))
    t = np.clip(frames_t, eps, 1 - eps)
    entropy = -np.mean(t * np.log(t) + (1 - t) * np.log(1 - t))
    # BCE to the teacher less the teacher's entropy (binary KL): 0 when the student matches the teacher
    assert float(distillation_loss(sed, frames_t, frames_s, 2.0)) == pytest.approx(bce - entropy, rel=1e-4)
    assert float(distillation_loss(sed, frames_t, frames_t, 2.0)) == pytest.approx(0.0, abs=1e-5)


def test_frame_outputs_are_resampled_to_the_student_s_frames():
    values = np.stack([np.linspace(0, 1, 50), np.ones(50)], axis=1)
    out = distill.resample_frames(values, 25)
    assert out.shape == (25, 2) and np.allclose(out[:, 1], 1.0)
    assert np.all(np.diff(out[:, 0]) > 0) and 0 < out[0, 0] < 0.05 and 0.95 < out[-1, 0] < 1
    assert np.array_equal(distill.resample_frames(values, 50), values.astype(np.float32))


def test_clip_files_stay_inside_the_folder(tmp_path):
    assert distill.clip_file(tmp_path, "asc", "audio/a.wav") == tmp_path / "asc" / "audio" / "a.wav.npy"
    assert distill.clip_file(tmp_path, "sed", "../../x.wav@10s") == tmp_path / "sed" / "x.wav@10s.npy"
    assert distill.clip_file(tmp_path, "sed", "/abs/y.wav").is_relative_to(tmp_path / "sed")


def _student(distilled: bool, x, y, teacher, steps=150):
    keras.utils.set_random_seed(0)
    (asc,) = parse_task_set("asc")
    network = build_model([asc], SMALL)
    options = {"distillation": {"asc": (1.0, 1.0)}} if distilled else {}
    strategy = SoftMTL(network, [asc], **options)
    strategy.compile(optimizer=make_optimizer(1e-2, total_steps=steps, warmup_fraction=0.0))
    targets = {"target": y, "teacher": teacher} if distilled else y
    batches = tf.data.Dataset.from_tensors({"asc": (x, targets)}).repeat()
    strategy.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0)
    return np.asarray(network(x, training=True)["asc"])  # batch statistics: no moving-average lag


def test_a_distilled_student_ends_closer_to_its_teacher_than_one_trained_without():
    rng = np.random.default_rng(0)
    n, classes = 16, 10
    x = rng.standard_normal((n, 101, 128)).astype(np.float32)
    y = (np.arange(n) % classes).astype(np.int32)
    x += y[:, None, None] * 0.3
    # a fixed teacher that spreads its belief over the right class and the next one
    teacher = np.full((n, classes), 0.02, np.float32)
    teacher[np.arange(n), y] = 0.5
    teacher[np.arange(n), (y + 1) % classes] = 0.34
    teacher /= teacher.sum(axis=1, keepdims=True)

    def kl(p):
        return float(np.mean(np.sum(teacher * np.log(teacher / np.clip(p, 1e-7, 1)), axis=1)))

    assert kl(_student(True, x, y, teacher)) < 0.7 * kl(_student(False, x, y, teacher))


def _outputs_folder(tmp_path, classes, tasks="asc", level="clip"):
    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "teacher.json").write_text(json.dumps({"tasks": {tasks: {"level": level, "classes": classes}}}))
    return folder


def test_teachers_that_cannot_teach_are_one_error_line_before_any_data_is_read(tmp_path):
    (asc,) = parse_task_set("asc")
    dirs = {"KERAS_MTL_DATA_DIR": str(tmp_path / "data"), "KERAS_MTL_CACHE_DIR": str(tmp_path / "cache")}
    cases = [
        (["--teacher-outputs", _outputs_folder(tmp_path, list(reversed(asc.classes)))], "has the classes"),
        (["--teacher", tmp_path / "nowhere"], "not a finished run folder"),
    ]
    other = tmp_path / "other"
    other.mkdir()
    (other / "teacher.json").write_text(json.dumps({"tasks": {"scr": {"level": "clip", "classes": ["yes"]}}}))
    cases.append((["--teacher-outputs", other], "names none of this run's tasks"))
    cases.append((["--teacher-outputs", tmp_path / "empty"], "no teacher.json"))
    cases.append((["--distill-temperature", "0", "--teacher-outputs", other], "distill_temperature must be positive"))
    (sed,) = parse_task_set("sed")
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "teacher.json").write_text(json.dumps({"tasks": {"sed": {"level": "frame", "classes": sed.classes}}}))
    cases.append((["--task-set", "sed", "--architecture", "mtl-vae", "--teacher-outputs", frames], "does not apply"))
    for args, fragment in cases:
        result = run_cli(
            ["train", "--preset", "tiny", "--task-set", "asc", *args, "--output-dir", tmp_path / "r"], dirs
        )
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], result.stderr[-2000:]
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # refused before the data was generated


@pytest.mark.slow
def test_a_teacher_run_teaches_a_student_and_resume_reuses_its_outputs(tmp_path, tiny_run):
    # the student: another front end (64 mels) than the teacher (the tiny preset's), both tasks
    mels = tmp_path / "mels.yaml"
    mels.write_text("frontend:\n  n_mels: 64\nmodel:\n  pools: [[2, 4], [2, 4]]\n")
    out = tmp_path / "student"
    args = ["train", "--preset", "tiny", "--task-set", "asc,sed", "--teacher", tiny_run.path, "--epochs", "2",
            "--distill-weight", "asc=0.5,sed=2", "--config", mels, "--output-dir", out]  # fmt: skip
    result = run_cli(args, {k: tiny_run.env[k] for k in ("KERAS_MTL_DATA_DIR", "KERAS_MTL_CACHE_DIR")})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distillation"]["asc"]["weight"] == 0.5 and metrics["distillation"]["sed"]["weight"] == 2.0
    assert metrics["distillation"]["sed"]["source"] == [str(tiny_run.path)]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["training"]["teachers"] == [str(tiny_run.path)]
    described = json.loads((out / "teacher_outputs" / "teacher.json").read_text())
    assert set(described["tasks"]) == {"asc", "sed"}
    files = sorted((out / "teacher_outputs" / "sed").rglob("*.npy"))
    assert files and np.load(files[0]).shape[1] == len(parse_task_set("sed")[0].classes)
    asc_file = next((out / "teacher_outputs" / "asc").rglob("*.npy"))
    assert math.isclose(float(np.load(asc_file).sum()), 1.0, rel_tol=1e-4)  # softmax probabilities
    # --resume of an unfinished run reads the outputs back (the teacher is not scored again)
    (out / "metrics.json").unlink()
    stamp = asc_file.stat().st_mtime_ns
    resumed = run_cli(
        ["train", "--resume", out], {k: tiny_run.env[k] for k in ("KERAS_MTL_DATA_DIR", "KERAS_MTL_CACHE_DIR")}
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert asc_file.stat().st_mtime_ns == stamp and (out / "metrics.json").is_file()
