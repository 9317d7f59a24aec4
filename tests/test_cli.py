"""The keras-mtl command: its verbs, the script shims, and ``evaluate`` on a finished run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from keras_mtl.cli import main as cli_main
from tests.conftest import REPO, keras_mtl_command, run_cli


def test_help_lists_every_verb():
    result = subprocess.run([*keras_mtl_command(), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for verb in (
        "train",
        "evaluate",
        "export",
        "firmware",
        "compress",
        "profile",
        "synergy",
        "analyze",
        "experiment",
        "download",
        "make-manifest",
    ):
        assert f"  {verb} " in result.stdout, verb
    assert "TensorFlow" not in result.stderr  # --help imports no verb module


@pytest.mark.parametrize("verb", list(cli_main.VERBS))
def test_every_verb_has_its_own_help(verb, capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main.main([verb, "--help"])
    assert stop.value.code == 0
    assert f"usage: keras-mtl {verb}" in capsys.readouterr().out


def test_unknown_verb_is_a_usage_error():
    result = subprocess.run([*keras_mtl_command(), "fly"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "invalid choice: 'fly'" in result.stderr


def test_every_script_is_a_shim_of_a_verb():
    modules = {module for module, _ in cli_main.VERBS.values()}
    for script in sorted((REPO / "scripts").glob("*.py")):
        text = script.read_text()
        assert "from keras_mtl.cli.main import run" in text and len(text.splitlines()) <= 10, script.name
        verb = text.split('run(["', 1)[1].split('"', 1)[0]
        assert cli_main.VERBS[verb][0] in modules


@pytest.mark.slow
def test_train_dry_run_prints_the_same_through_the_command_and_the_script(tmp_path, tiny_env):
    args = ["train", "--task-set", "asc,sed", "--dry-run"]
    command = subprocess.run([*keras_mtl_command(), *args], capture_output=True, text=True, env=tiny_env, timeout=300)
    script = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), *args[1:]],
        capture_output=True,
        text=True,
        env=tiny_env,
        timeout=300,
    )
    assert command.returncode == 0 and script.returncode == 0, command.stderr[-2000:] + script.stderr[-2000:]
    assert command.stdout == script.stdout and "shared/conv1" in command.stdout


@pytest.mark.slow
def test_evaluate_rewrites_metrics_with_the_same_values(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.path, run, ignore=shutil.ignore_patterns("checkpoint", "export", "compress-*"))
    before = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()  # as after an evaluation that failed
    result = subprocess.run(
        [*keras_mtl_command(), "evaluate", str(run)], capture_output=True, text=True, env=tiny_run.env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    after = json.loads((run / "metrics.json").read_text())
    assert set(after["tasks"]) == set(before["tasks"]) == {"asc", "sed"}
    for name, task in before["tasks"].items():
        for key, value in task["metrics"].items():
            if isinstance(value, float):
                assert after["tasks"][name]["metrics"][key] == pytest.approx(value, abs=1e-6), (name, key)
        assert after["tasks"][name]["headline"] == pytest.approx(task["headline"]) or after["tasks"][name]["headline"][
            "value"
        ] == pytest.approx(task["headline"]["value"], abs=1e-6)
    assert "event_f1_macro" in result.stdout


def test_evaluate_refuses_a_folder_that_holds_no_run(tmp_path):
    result = run_cli(["evaluate", tmp_path])
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.stderr
