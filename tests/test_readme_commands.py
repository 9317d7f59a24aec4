"""Every command README.md and the docs/ pages document is run by a test in its smallest
form (tiny preset, one epoch, dry runs): here, or by the named test that already runs it. A README
command without an entry below fails the first test, so a documented command cannot silently break."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from keras_mtl.cli import main as cli_main
from tests.conftest import REPO, keras_mtl_command

READMES = (REPO / "README.md", REPO / "microcontroller" / "README.md", *sorted((REPO / "docs").rglob("*.md")))
PREFIXES = (
    "python scripts/",
    "python3 -m venv",
    "cmake ",
    "qemu-system-arm ",
    "TF_CONFIG=",
    "keras-mtl ",
    "mkdocs ",
    "pip install ",
    "python -m build",
)
VERBS = tuple(cli_main.VERBS)  # a line "keras-mtl X" with another X is program output shown in a page


def documented_commands() -> list[str]:
    """The command lines of the READMEs' code blocks (continuations joined, comments dropped)."""
    found = []
    for readme in READMES:
        in_block, pending = False, ""
        for line in readme.read_text().splitlines():
            if line.strip().startswith("```"):
                in_block, pending = not in_block, ""
                continue
            if not in_block:
                continue
            text = pending + line.strip()
            if text.endswith("\\"):
                pending = text[:-1].rstrip() + " "
                continue
            pending = ""
            command = re.split(r"\s{2,}#|\s#\s", text)[0].strip()
            if command.startswith("keras-mtl ") and command.split()[1] not in (*VERBS, "--version"):
                continue  # firmware output shown in the README, not a command
            if command.startswith(PREFIXES):
                found.append(command)
    return found


TINY = ("--preset", "tiny", "--epochs", "1")
# README command -> the smallest form this file runs (keras-mtl arguments; {corpus}, {run}, {out},
# {manifest}, {office} are filled in), or the test that runs it already
RUN, COVERED = "run", "covered"
COMMANDS = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && python scripts/train.py "
    "--task-set asc,sed": (COVERED, "tests/test_train_cli.py::test_train_end_to_end_on_tiny_preset"),
    "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt && python -m pytest -q -n 2": (
        COVERED,
        "tests/test_readme_commands.py::test_every_documented_command_is_run_by_a_test",  # this suite itself
    ),
    "python scripts/train.py --task-set asc,sed": (
        COVERED,
        "tests/test_train_cli.py::test_train_end_to_end_on_tiny_preset",
    ),
    "python scripts/train.py --task-set asc": (RUN, ("train", "--task-set", "asc", *TINY)),
    "python scripts/train.py --task-set sed --epochs 20 --batch-size 16": (
        RUN,
        ("train", "--task-set", "sed", *TINY, "--batch-size", "16"),
    ),
    "python scripts/train.py --task-set asc,sed --dry-run": (
        COVERED,
        "tests/test_train_cli.py::test_dry_run_prints_summary_and_profile",
    ),
    "python scripts/train.py --task-set gc,ac,scr,vad": (
        COVERED,
        "tests/test_train_cli.py::test_speech_tasks_end_to_end_on_synthetic_speech",
    ),
    "python scripts/train.py --task-set digits --task digits=clip:fsdd.csv --preset seed001": (
        RUN,
        ("train", "--task-set", "digits", "--task", "digits=clip:{manifest}", "--preset", "seed001", "--epochs", "1"),
    ),
    "python scripts/train.py --task-set asc,sed --data-root /data/corpora": (
        RUN,
        ("train", "--task-set", "asc,sed", "--data-root", "{corpus}", *TINY),
    ),
    "python scripts/train.py --task-set asc,sed --data-root asc=/data/TAU-urban-acoustic-scenes-2022-mobile-development "
    "--data-root sed=/data/dcase/dataset": (
        RUN,
        (
            "train",
            "--task-set",
            "asc,sed",
            "--data-root",
            "asc={corpus}/tau22",
            "--data-root",
            "sed={corpus}/desed",
            *TINY,
        ),
    ),
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
    '"index": 0}}\' python scripts/train.py --task-set asc,sed --distribute multi-worker --output-dir runs/mw': (
        COVERED,
        "tests/test_distribute.py::test_two_workers_hold_identical_student_and_teacher",
    ),
    "python scripts/experiment.py strategies --seeds 0,1,2": (
        RUN,
        ("experiment", "strategies", "--rows", "soft", "--seeds", "0", *TINY),
    ),
    "python scripts/experiment.py weighting --seeds 0,1,2": (
        COVERED,
        "tests/test_experiments.py::test_weighting_experiment_end_to_end_and_resume",
    ),
    "python scripts/experiment.py strategies --dry-run": (RUN, ("experiment", "strategies", "--dry-run")),
    "python scripts/experiment.py balancing --seeds 0,1,2": (
        RUN,
        ("experiment", "balancing", "--rows", "pcgrad", "--seeds", "0", *TINY),
    ),
    "python scripts/experiment.py cross-corpus --seeds 0,1,2": (
        COVERED,
        "tests/test_cross_corpus.py::test_cross_corpus_experiment_end_to_end",
    ),
    "python scripts/experiment.py distill --seeds 0,1,2": (RUN, ("experiment", "distill", "--seeds", "0", "--dry-run")),
    "python scripts/tune.py space.yaml --task-set asc,sed --preset board --trials 20": (
        COVERED,
        "tests/test_tune.py::test_tune_trains_a_run_folder_per_trial_end_to_end",
    ),
    "python scripts/tune.py space.yaml --task-set asc,sed --preset board --teacher runs/default --objective ar "
    "--reference asc=runs/single-asc --reference sed=runs/single-sed --max-macs 4.5e6 --trials 30": (
        COVERED,
        "tests/test_tune.py::test_tune_trains_a_run_folder_per_trial_end_to_end",  # --teacher: tests/test_distill.py
    ),
    "python scripts/tune.py space.yaml --task-set asc,sed --preset board --storage "
    "postgresql://me@dbhost/keras_mtl --study-name board": (
        COVERED,
        "tests/test_tune.py::test_tune_trains_a_run_folder_per_trial_end_to_end",  # a storage URL (SQLite there)
    ),
    "python scripts/experiment.py balancing-speech --seeds 0,1,2": (
        RUN,
        ("experiment", "balancing-speech", "--seeds", "0,1,2", "--dry-run"),
    ),
    "python scripts/experiment.py strategies --rows soft,cross-hard --epochs 10 --data-root /data/corpora": (
        RUN,
        ("experiment", "strategies", "--rows", "soft,cross-hard", *TINY, "--data-root", "{corpus}", "--dry-run"),
    ),
    "python scripts/synergy.py --tasks gc,ac,scr,vad --threshold 2.0": (
        COVERED,
        "tests/test_synergy.py::test_synergy_pipeline_end_to_end_with_shards_and_merge",
    ),
    "python scripts/synergy.py --tasks gc,ac,scr,vad --shard 0/4  (… 3/4)": (
        COVERED,
        "tests/test_synergy.py::test_synergy_pipeline_end_to_end_with_shards_and_merge",
    ),
    "python scripts/synergy.py --tasks gc,ac,scr,vad --merge": (
        COVERED,
        "tests/test_synergy.py::test_synergy_pipeline_end_to_end_with_shards_and_merge",
    ),
    "python scripts/synergy.py --tasks gc,ac,scr,vad --merge --compress lth,lt4rec": (
        COVERED,
        "tests/test_synergy.py::test_synergy_pipeline_end_to_end_with_shards_and_merge",
    ),
    "python scripts/train.py --preset seed002": (RUN, ("train", "--preset", "seed002", "--dry-run")),
    "python scripts/train.py --task-set sed --model mtl-vae --data-root sed=/data/DESED": (
        COVERED,
        "tests/test_vae.py::test_train_cli_mtl_vae_with_four_data_types_reduces_the_loss",
    ),
    "python scripts/experiment.py vae-data --seeds 0": (RUN, ("experiment", "vae-data", "--seeds", "0", "--dry-run")),
    "python scripts/experiment.py vae-encoder --seeds 0": (
        RUN,
        ("experiment", "vae-encoder", "--seeds", "0", "--dry-run"),
    ),
    "python scripts/compress.py runs/<run> --method lth --target-params 52600": (
        RUN,
        ("compress", "{run}", "--method", "lth", "--rate", "0.5", "--epochs", "1", "--max-eval-clips", "1", "-q"),
    ),
    "python scripts/compress.py runs/<run> --method lt4rec --target-params 52600": (
        COVERED,
        "tests/test_compression.py::test_compress_cli_writes_run_folders",
    ),
    "python scripts/compress.py runs/<run> --method qat --epochs 2": (
        COVERED,
        "tests/test_compression.py::test_compress_cli_writes_run_folders",
    ),
    "python scripts/analyze_tasks.py --tasks asc,sed,scr,gc,ac,vad": (
        COVERED,
        "tests/test_analysis.py::test_analyze_tasks_cli_end_to_end",
    ),
    "python scripts/analyze_tasks.py --tasks asc,scr,gc,ac --preset seed004": (
        RUN,
        ("analyze", "--tasks", "asc,scr,gc,ac", "--preset", "seed004", "--dry-run"),
    ),
    "python scripts/analyze_tasks.py --tasks gc,ac,scr,vad --preset seed001 --epochs 10 --reuse "
    "runs/synergy-gc-ac-scr-vad": (COVERED, "tests/test_analysis.py::test_reuse_takes_matching_synergy_runs_only"),
    "python scripts/train.py --task-set knock --task knock=clip:knocks.csv": (
        RUN,
        ("train", "--task-set", "knock", "--task", "knock=clip:{manifest}", *TINY),
    ),
    "python scripts/predict.py runs/<run> recordings/ --plot": (
        RUN,
        ("predict", "{run}", "{corpus}/desed/audio/validation", "--output", "{out}", "--plot"),
    ),
    "mkdocs serve": (COVERED, "tests/test_docs.py::test_mkdocs_builds_strictly"),  # serves what it builds
    "mkdocs build --strict": (COVERED, "tests/test_docs.py::test_mkdocs_builds_strictly"),
    "pip install .": (COVERED, "tests/test_docs.py::test_the_wheel_installs_and_runs_on_its_own"),
    "keras-mtl --version": (COVERED, "tests/test_docs.py::test_the_wheel_installs_and_runs_on_its_own"),
    "keras-mtl train --task-set asc --preset tiny --epochs 1": (
        COVERED,
        "tests/test_docs.py::test_the_wheel_installs_and_runs_on_its_own",
    ),
    "python scripts/predict.py runs/<run> my_clip.wav": (
        RUN,
        (
            "predict",
            "{run}",
            "{corpus}/desed/audio/validation/validation_16k/validation_00000.wav",
            "--output",
            "{out}",
        ),
    ),
    "python scripts/predict.py runs/<run> recordings/ --output results --plot --scores": (
        RUN,
        ("predict", "{run}", "{corpus}/desed/audio/validation", "--output", "{out}", "--plot", "--scores"),
    ),
    "python scripts/predict.py runs/<run>/export recordings/ --output results-int8": (
        COVERED,
        "tests/test_predict.py::test_predict_on_an_export_gives_the_int8_findings_of_the_export_report",
    ),
    "python scripts/predict.py runs/<run> --live": (
        COVERED,
        "tests/test_predict.py::test_live_prints_findings_from_a_replaced_input_stream",
    ),
    "python scripts/predict.py runs/<run> --benchmark 1,60": (RUN, ("predict", "{run}", "--benchmark", "0.1")),
    "python scripts/export.py runs/<run>": (
        COVERED,
        "tests/test_export.py::test_export_report_tflm_agrees_with_litert",
    ),
    "python scripts/firmware.py runs/<run>/export --wav clip.wav": (
        COVERED,
        "tests/test_export.py::test_firmware_in_qemu_prints_what_the_host_int8_pipeline_finds",
    ),
    "cmake -S microcontroller -B build/qemu -G Ninja -DKM_EXPORT_DIR=runs/<run>/export -DKM_WAV=clip.wav": (
        COVERED,
        "tests/test_export.py::test_firmware_in_qemu_prints_what_the_host_int8_pipeline_finds",
    ),
    "cmake --build build/qemu": (
        COVERED,
        "tests/test_export.py::test_firmware_in_qemu_prints_what_the_host_int8_pipeline_finds",
    ),
    "qemu-system-arm -M mps2-an386 -nographic -semihosting -kernel build/qemu/listener.elf": (
        COVERED,
        "tests/test_export.py::test_firmware_in_qemu_prints_what_the_host_int8_pipeline_finds",
    ),
    "python scripts/firmware.py runs/<run>/export --wav clip.wav [--tflm-source DIR]": (
        COVERED,
        "tests/test_export.py::test_firmware_in_qemu_prints_what_the_host_int8_pipeline_finds",
    ),
    "cmake -S microcontroller -B build/nano -G Ninja -DKM_BOARD=nano33ble -DKM_EXPORT_DIR=runs/<run>/export": (
        COVERED,
        "tests/test_export.py::test_generated_sources_and_front_end_compile_for_cortex_m4",
    ),
    "cmake --build build/nano": (
        COVERED,
        "tests/test_export.py::test_generated_sources_and_front_end_compile_for_cortex_m4",
    ),
    "python scripts/train.py --task-set office --task office=desed:/data/office-events --preset tiny --epochs 1": (
        RUN,
        ("train", "--task-set", "office", "--task", "office=desed:{office}", *TINY),
    ),
}


def test_every_documented_command_is_run_by_a_test():
    documented = documented_commands()
    assert documented, "no commands found in the READMEs"
    missing = [c for c in documented if c not in COMMANDS]
    assert not missing, f"README commands without a test entry in {__file__}: {missing}"
    stale = [c for c in COMMANDS if c not in documented]
    assert not stale, f"entries for commands no README documents any more: {stale}"
    for command, (kind, value) in COMMANDS.items():
        if kind == COVERED:
            path, _, name = value.partition("::")
            assert re.search(rf"^def {name}\(", (REPO / path).read_text(), re.M), f"{command}: {value} not found"


def _office_events(corpus: Path, out: Path) -> Path:
    """The tiny DESED layout with another event set (labels with spaces)."""
    shutil.copytree(corpus / "desed", out)
    rename = {"Speech": "door knock", "Dog": "car horn"}
    for tsv in (out / "metadata").rglob("*.tsv"):
        text = tsv.read_text()
        for old, new in rename.items():
            text = text.replace(f"\t{old}\n", f"\t{new}\n").replace(old, new)
        tsv.write_text(text)
    return out


RUNS = {command: value for command, (kind, value) in COMMANDS.items() if kind == RUN}


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", sorted(RUNS), ids=lambda c: re.sub(r"\W+", "-", c.removeprefix("python scripts/"))[:60]
)
def test_documented_command_in_its_smallest_form(command, tmp_path, tiny_env, tiny_corpus, tiny_run):
    fill = {"corpus": str(tiny_corpus), "out": str(tmp_path / "out")}
    args = list(RUNS[command])
    text = " ".join(args)
    if "{manifest}" in text:
        from keras_mtl.data.readers.manifest import build_clip_manifest

        folder = tiny_corpus / "tau22" / "audio"
        fill["manifest"] = str(tmp_path / "fsdd.csv")
        build_clip_manifest(folder, fill["manifest"], r"^([a-z_]+)-", r"-[0-2]-a\.wav$")
    if "{office}" in text:
        fill["office"] = str(_office_events(tiny_corpus, tmp_path / "office"))
    if "{run}" in text:
        fill["run"] = str(tmp_path / "run")
        shutil.copytree(tiny_run.path, fill["run"], ignore=shutil.ignore_patterns("checkpoint", "export", "compress-*"))
    args = [a.format(**fill) for a in args]
    if args[0] in ("train", "experiment") and "--dry-run" not in args and "--output-dir" not in args:
        args += ["--output-dir", fill["out"]]
    result = subprocess.run(
        [*keras_mtl_command(), *args], capture_output=True, text=True, env=tiny_env, cwd=tmp_path, timeout=900
    )
    assert result.returncode == 0, f"{args}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    if args[0] == "train" and "--dry-run" not in args:
        metrics = json.loads((Path(fill["out"]) / "metrics.json").read_text())
        assert metrics["tasks"]
