"""scripts/train.py end to end on the tiny preset, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from keras_mtl.core.errors import ConfigError
from keras_mtl.runs.config import load_preset, preset_names
from tests.conftest import TINY_RUN_ARGS, run_cli

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "scripts" / "train.py"


def run_train(*args, env_dirs: Path | None = None, env: dict | None = None, timeout=600):
    """``env_dirs``: the command in this process (conftest.run_cli) with data and cache there; ``env``:
    ``scripts/train.py`` in a subprocess with that environment (the end-to-end runs)."""
    if env is None:
        dirs = {"KERAS_MTL_DATA_DIR": str(env_dirs / "data"), "KERAS_MTL_CACHE_DIR": str(env_dirs / "cache")}
        return run_cli(["train", *args], dirs)
    return subprocess.run([sys.executable, str(TRAIN), *args], capture_output=True, text=True, env=env, timeout=timeout)


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_train_end_to_end_on_tiny_preset(tmp_path, tiny_run):
    out, result = tiny_run.path, tiny_run
    for name in (
        "config.yaml",
        "model_summary.txt",
        "profile.txt",
        "model.keras",
        "history.csv",
        "metrics.json",
        "training_curves.png",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"asc", "sed"}
    asc, sed = metrics["tasks"]["asc"]["metrics"], metrics["tasks"]["sed"]["metrics"]
    assert 0.0 <= asc["accuracy"] <= 1.0 and asc["n_clips"] == 20
    for key in ("event_f1_macro", "segment_f1_macro", "psds1"):
        assert 0.0 <= sed[key] <= 1.0
    assert metrics["model"]["params"] > 0 and metrics["tasks"]["sed"]["macs_per_second"] > 0
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert len(rows) == 2 and {"asc_loss", "sed_loss", "val_asc_loss", "val_sed_frame_f1"} <= set(rows[0])
    summary = (out / "model_summary.txt").read_text()
    assert "shared/conv1" in summary and "asc/attention" in summary and "sed/gru" in summary
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["tasks"] == ["asc", "sed"] and config["strategy"] == "soft"
    assert "asc" in result.stdout and "event_f1_macro" in result.stdout  # closing results table

    from keras_mtl.core.backend import keras

    model = keras.models.load_model(out / "model.keras")
    assert set(model.output) == {"asc", "sed", "sed_weak"}  # the mean teacher's clip-level SED output
    assert metrics["mean_teacher"] == ["sed"]

    # The rerun reuses the generated data and the feature cache.
    again = run_train("--preset", "tiny", "--task-set", "asc", "--output-dir", str(tmp_path / "run2"), env=tiny_run.env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 features computed" in again.stderr
    assert set(json.loads((tmp_path / "run2" / "metrics.json").read_text())["tasks"]) == {"asc"}


def test_dry_run_prints_summary_and_profile(tmp_path):
    result = run_train("--task-set", "asc,sed", "--dry-run", env_dirs=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "shared/conv1" in result.stdout and "MACs / 1 s" in result.stdout
    assert not (tmp_path / "data").exists()  # nothing generated


def test_unknown_task(tmp_path):
    assert_one_line_error(
        run_train("--task-set", "asc,foo", env_dirs=tmp_path), "unknown task 'foo'", "asc, gc, scr, sed, vad"
    )


def test_unknown_strategy(tmp_path):
    assert_one_line_error(run_train("--strategy", "magic", "--dry-run", env_dirs=tmp_path), "unknown strategy 'magic'")


def test_missing_data_root(tmp_path):
    missing = tmp_path / "nowhere"
    assert_one_line_error(run_train("--data-root", str(missing), env_dirs=tmp_path), str(missing), "does not exist")


@pytest.fixture()
def corpus_copy(tmp_path, tiny_corpus):
    root = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, root)
    return root


def _tiny(corpus, tmp_path, tasks="asc,sed"):
    return run_train(
        "--preset",
        "tiny",
        "--task-set",
        tasks,
        "--data-root",
        str(corpus),
        "--output-dir",
        str(tmp_path / "run"),
        env_dirs=tmp_path,
    )


def test_unreadable_wav(tmp_path, corpus_copy):
    victim = sorted((corpus_copy / "tau22" / "audio").glob("*.wav"))[0]
    victim.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    assert_one_line_error(_tiny(corpus_copy, tmp_path, "asc"), victim.name, "unreadable audio")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_empty_wav(tmp_path, corpus_copy):
    victim = sorted((corpus_copy / "desed" / "audio" / "validation" / "validation_16k").glob("*.wav"))[0]
    sf.write(victim, np.zeros(0, np.float32), 16000)
    assert_one_line_error(_tiny(corpus_copy, tmp_path, "sed"), victim.name, "empty audio file")


def test_tsv_onset_after_offset(tmp_path, corpus_copy):
    tsv = corpus_copy / "desed" / "metadata" / "train" / "synthetic21_train" / "soundscapes.tsv"
    lines = tsv.read_text().splitlines()
    name, onset, offset, label = lines[2].split("\t")
    lines[2] = "\t".join([name, offset, onset, label])
    tsv.write_text("\n".join(lines) + "\n")
    assert_one_line_error(_tiny(corpus_copy, tmp_path), "soundscapes.tsv:3:", "is after offset")


def test_tsv_unknown_class(tmp_path, corpus_copy):
    tsv = corpus_copy / "desed" / "metadata" / "validation" / "validation.tsv"
    lines = tsv.read_text().splitlines()
    lines[1] = lines[1].rsplit("\t", 1)[0] + "\tTrumpet"
    tsv.write_text("\n".join(lines) + "\n")
    assert_one_line_error(_tiny(corpus_copy, tmp_path), "validation.tsv:2:", "unknown event label 'Trumpet'")


def test_bad_batch_size_and_config_key(tmp_path):
    assert_one_line_error(run_train("--batch-size", "asc=0", "--dry-run", env_dirs=tmp_path), "batch sizes")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  channelz: [1]\n")
    assert_one_line_error(
        run_train("--config", str(bad), "--dry-run", env_dirs=tmp_path), "unknown key(s) in model: channelz"
    )


@pytest.mark.slow
def test_speech_tasks_end_to_end_on_synthetic_speech(tmp_path, tiny_env):
    out = tmp_path / "run"
    result = run_train("--preset", "tiny", "--task-set", "gc,ac,scr,vad", "--output-dir", str(out), env=tiny_env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())["tasks"]
    assert set(metrics) == {"gc", "ac", "scr", "vad"}
    assert metrics["vad"]["headline"]["name"] == "frame_roc_auc"
    speech_root = next(Path(tiny_env["KERAS_MTL_DATA_DIR"]).glob("speech-*"))
    assert {p.name for p in speech_root.iterdir()} >= {"speech_commands", "common_voice", "vad", "complete.json"}


def test_unknown_architecture_and_unsupported_task(tmp_path):
    assert_one_line_error(
        run_train("--architecture", "resnet", "--dry-run", env_dirs=tmp_path), "unknown architecture 'resnet'"
    )
    assert_one_line_error(
        run_train("--architecture", "cp_mobile", "--task-set", "asc,sed", "--dry-run", env_dirs=tmp_path),
        "cannot predict frame-level task sed",
    )


@pytest.mark.slow
def test_cross_soft_with_dwa_end_to_end(tmp_path, tiny_env):
    out = tmp_path / "run"
    result = run_train(
        "--preset",
        "tiny",
        "--strategy",
        "cross-soft",
        "--weighting",
        "dwa",
        "--epochs",
        "3",
        "--output-dir",
        str(out),
        env=tiny_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [float(r["weight_asc"]) for r in rows[:2]] == [1.0, 1.0]  # DWA: 1 for the first two epochs
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weighting"] == "dwa" and metrics["strategy"] == "cross-soft"
    assert metrics["mean_teacher"] == ["sed"]  # the synthetic DESED set has weak and unlabelled clips
    assert_one_line_error(run_train("--weighting", "magic", "--dry-run", env=tiny_env), "unknown weighting 'magic'")


@pytest.mark.slow
def test_freeze_end_to_end_trains_in_two_phases(tmp_path, tiny_env):
    out = tmp_path / "run"
    result = run_train(
        "--preset",
        "tiny",
        "--strategy",
        "freeze",
        "--order",
        "sed,asc",
        "--mean-teacher",
        "off",
        "--output-dir",
        str(out),
        env=tiny_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert [r["phase"] for r in rows] == ["sed", "sed", "asc", "asc"]
    assert rows[2]["val_sed_loss"] == rows[3]["val_sed_loss"]  # SED frozen while ASC trains
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["phases"] == ["sed", "asc"] and metrics["epochs"] == 4 and metrics["mean_teacher"] == []


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--strategy", "freeze"), ("needs --order", "asc,sed")),
        (("--strategy", "freeze", "--order", "sed,scr"), ("--order sed,scr", "each task")),
        (("--order", "sed,asc"), ("--order is for --strategy freeze",)),
        (("--strategy", "hard", "--weighting", "mfl"), ("--weighting mfl", "strategy hard")),
        (("--strategy", "hard", "--alpha", "0.7"), ("--alpha", "strategy hard")),
        (("--alpha", "1.5"), ("--alpha must be between 0 and 1",)),
        (("--alpha", "0.5", "--weighting", "dwa"), ("--alpha", "--weighting dwa")),
        (("--strategy", "cross-hard", "--task-set", "asc"), ("needs at least two tasks",)),
    ],
)
def test_strategy_option_errors(tmp_path, args, fragments):
    assert_one_line_error(run_train(*args, "--dry-run", env_dirs=tmp_path), *fragments)


def _without_timings(value):
    if isinstance(value, dict):
        return {
            k: _without_timings(v)
            for k, v in value.items()
            if "time" not in k and "seconds" not in k and k not in ("run_dir", "output_dir")
        }
    return value


@pytest.mark.slow
def test_deterministic_reruns_give_identical_metrics(tmp_path, tiny_run):
    runs = [tiny_run.path, tmp_path / "second"]  # the shared run is trained with --deterministic --seed 3
    result = run_train(*TINY_RUN_ARGS, "--output-dir", str(runs[1]), env=tiny_run.env)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (json.loads((run / "metrics.json").read_text()) for run in runs)
    assert _without_timings(first) == _without_timings(second)
    histories = [
        [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader((run / "history.csv").open())]
        for run in runs
    ]
    assert histories[0] == histories[1] and len(histories[0]) > 1
    assert yaml.safe_load((runs[0] / "config.yaml").read_text())["deterministic"] is True


def test_nan_samples(tmp_path, corpus_copy):
    victim = sorted((corpus_copy / "tau22" / "audio").glob("*.wav"))[1]
    audio, rate = sf.read(victim, dtype="float32")
    audio[100] = np.nan
    sf.write(victim, audio, rate, subtype="FLOAT")
    assert_one_line_error(_tiny(corpus_copy, tmp_path, "asc"), victim.name, "NaN or infinite samples")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_clip_in_both_train_and_test_split(tmp_path, corpus_copy):
    setup = corpus_copy / "tau22" / "evaluation_setup"
    train_row = (setup / "fold1_train.csv").read_text().splitlines()[1]
    evaluate = setup / "fold1_evaluate.csv"
    evaluate.write_text(evaluate.read_text().rstrip("\n") + "\n" + train_row + "\n")
    assert_one_line_error(
        _tiny(corpus_copy, tmp_path, "asc"),
        train_row.split("\t")[0].split("/")[-1],
        "in both the",
        "cannot be trained and tested on",
    )


def test_missing_split_file(tmp_path, corpus_copy):
    (corpus_copy / "desed" / "metadata" / "validation" / "validation.tsv").unlink()
    result = _tiny(corpus_copy, tmp_path, "sed")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "validation" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args, fragment",
    [(("--epochs", "-1"), "epochs"), (("--epochs", "0"), "epochs"), (("--learning-rate", "-0.1"), "learning")],
)
def test_bad_numbers_on_the_command_line(tmp_path, args, fragment):
    result = run_train("--preset", "tiny", *args, "--output-dir", str(tmp_path / "run"), env_dirs=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert fragment in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_a_presets_task_set_settings_apply_to_that_set_only_and_yield_to_the_users_yaml(tmp_path):
    from keras_mtl.cli import common
    from keras_mtl.cli.train import parse_args, resolve_config
    from keras_mtl.studies import experiments

    speech = resolve_config(parse_args(["--task-set", "vad,scr,ac,gc"]))  # any order
    assert speech.model.channels == (16, 32, 64, 96, 96) and speech.model.shared_blocks == 4
    assert speech.model.share_groups == ((("gc", "ac"), 1),)
    for subset in ("gc,ac,scr", "scr", "asc,sed"):
        assert resolve_config(parse_args(["--task-set", subset])).model.channels == (16, 32, 48, 64, 64), subset
    user = tmp_path / "user.yaml"
    user.write_text("model:\n  channels: [8, 16, 24, 32, 32]\n")
    mine = resolve_config(parse_args(["--task-set", "gc,ac,scr,vad", "--config", str(user)]))
    # the user's block structure replaces the preset's for this set as a whole
    assert mine.model.channels == (8, 16, 24, 32, 32) and mine.model.shared_blocks is None
    assert not mine.model.share_groups
    three = tmp_path / "three.yaml"
    three.write_text("model:\n  channels: [8, 16, 24]\n  pools: [[2, 4], [2, 4], [1, 8]]\n")
    assert resolve_config(parse_args(["--task-set", "gc,ac,scr,vad", "--config", str(three)])).model.n_shared == 3
    dropout = tmp_path / "dropout.yaml"
    dropout.write_text("model:\n  dropout: 0.2\n")
    kept = resolve_config(parse_args(["--task-set", "gc,ac,scr,vad", "--config", str(dropout)])).model
    assert kept.dropout == 0.2 and kept.shared_blocks == 4 and kept.channels == (16, 32, 64, 96, 96)
    # experiments: each row gets its own task set's entry, the user's YAML still wins, and the
    # method rows keep the flat encoder they were measured with
    base = common.base_config("default", str(user))
    rows = experiments.select_rows(
        experiments.get_experiment("balancing-speech"), ["single-scr", "gradnorm", "default"]
    )
    single, method, default = (experiments.row_config(base, row, 0, tmp_path / row.name) for row in rows)
    assert single.model.shared_blocks is None and single.model.channels == (8, 16, 24, 32, 32)
    assert method.model.shared_blocks is None and not method.model.share_groups
    assert method.model.channels == (8, 16, 24, 32, 32)
    assert default.model.shared_blocks is None and default.model.channels == (8, 16, 24, 32, 32)
    kept = experiments.row_config(common.base_config("default", str(dropout)), rows[2], 0, tmp_path / "d").model
    assert kept.dropout == 0.2 and kept.shared_blocks == 4
    # a task-set entry's epochs yield to the command line's --epochs, in train and in the experiments
    epochs = tmp_path / "epochs.yaml"
    epochs.write_text("task_sets:\n  gc,ac,scr,vad:\n    training:\n      epochs: 7\n")
    assert resolve_config(parse_args(["--task-set", "gc,ac,scr,vad", "--config", str(epochs)])).training.epochs == 7
    mine = resolve_config(parse_args(["--task-set", "gc,ac,scr,vad", "--config", str(epochs), "--epochs", "2"]))
    assert mine.training.epochs == 2
    short = experiments.row_config(common.base_config("default", str(epochs), 2), rows[2], 0, tmp_path / "e")
    assert short.training.epochs == 2 and short.model.shared_blocks == 4
    unchanged = experiments.row_config(common.base_config("default", str(epochs)), rows[2], 0, tmp_path / "f")
    assert unchanged.training.epochs == 7
    # the YAML's entry (any order) over its top level, its encoder structure replacing the preset entry's, the
    # same in train and in an experiment's row
    layered = tmp_path / "layered.yaml"
    layered.write_text(
        "model:\n  dropout: 0.2\ntask_sets:\n  vad,scr,ac,gc:\n    model:\n      dropout: 0.3\n"
        "      channels: [8, 16, 24, 32, 32]\n"
    )
    trained = resolve_config(parse_args(["--task-set", "gc,ac,scr,vad", "--config", str(layered)])).model
    row = experiments.row_config(common.base_config("default", str(layered)), rows[2], 0, tmp_path / "g").model
    for model in (trained, row):
        assert model.dropout == 0.3 and model.channels == (8, 16, 24, 32, 32)
        assert model.shared_blocks is None and not model.share_groups
    assert resolve_config(parse_args(["--task-set", "scr", "--config", str(layered)])).model.dropout == 0.2
    broken = tmp_path / "broken.yaml"
    broken.write_text("task_sets:\n  gc,ac,scr,vad:\n    training: 5\n")
    for make in (
        lambda: resolve_config(parse_args(["--task-set", "gc,ac,scr,vad", "--config", str(broken)])),
        lambda: common.base_config("default", str(broken)),
    ):
        with pytest.raises(ConfigError, match="training must be a mapping"):
            make()


def test_the_network_takes_the_front_ends_mel_bands(tmp_path):
    """frontend.n_mels sets the network's input width, for every architecture (it used to fail
    inside Keras with a broadcasting error); a model.n_mels alone sets the front end's; the two
    given apart and different are one error line naming both."""
    from keras_mtl.cli.train import parse_args, resolve_config
    from keras_mtl.runs.network import build_network
    from keras_mtl.tasks.registry import parse_task_set

    mels = tmp_path / "mels.yaml"
    mels.write_text("frontend:\n  n_mels: 256\n")
    config = resolve_config(parse_args(["--task-set", "asc,sed", "--config", str(mels)]))
    assert config.frontend.n_mels == 256 and config.model.n_mels == 256
    model_only = tmp_path / "model.yaml"
    model_only.write_text("model:\n  n_mels: 256\n")
    config = resolve_config(parse_args(["--task-set", "asc,sed", "--config", str(model_only)]))
    assert config.frontend.n_mels == 256 and config.model.n_mels == 256
    other = resolve_config(parse_args(["--task-set", "asc", "--architecture", "cp_mobile", "--config", str(mels)]))
    assert build_network(other, parse_task_set("asc")).input.shape[-1] == 256
    few = tmp_path / "few.yaml"
    few.write_text("frontend:\n  n_mels: 64\n")  # the default pools halve the bands 7 times
    result = run_train("--task-set", "asc,sed", "--config", str(few), "--dry-run", env_dirs=tmp_path)
    assert_one_line_error(result, "n_mels 64 is not divisible by the frequency pooling 128")
    both = tmp_path / "both.yaml"
    both.write_text("frontend:\n  n_mels: 64\nmodel:\n  n_mels: 96\n")
    result = run_train("--task-set", "asc,sed", "--config", str(both), "--dry-run", env_dirs=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result, "frontend.n_mels 64 and model.n_mels 96 differ", "set frontend.n_mels")


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_builds_its_network_for_its_front_end(preset):
    """Each preset's own architecture and tasks (asc,sed where it names none), as train.py builds them."""
    from keras_mtl.cli.train import parse_args, resolve_config
    from keras_mtl.runs.network import build_network
    from keras_mtl.tasks.registry import parse_task_set

    tasks = load_preset(preset).get("tasks") or ["asc", "sed"]
    config = resolve_config(parse_args(["--preset", preset, "--task-set", ",".join(tasks)]))
    network = build_network(config, parse_task_set(",".join(tasks)))
    assert network.input.shape[-1] == config.frontend.n_mels
    assert set(tasks) <= set(network.output)  # an output per task, by name


def test_a_preset_extends_another_without_its_task_set_settings():
    board, default = load_preset("board"), load_preset("default")
    assert "extends" not in board and board["synthetic"] == default["synthetic"]
    assert board["training"] == default["training"] and board["model"]["dropout"] == default["model"]["dropout"]
    assert board["frontend"]["n_mels"] == 64 and board["model"]["channels"] == [8, 16, 32, 64, 64]
    assert "task_sets" in default and "task_sets" not in board  # measured on the default's encoder
