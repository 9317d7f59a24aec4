"""The kinds of failure of the second round of field cases (issue 30; ../shared/field-cases/r2-*):
each test builds its own input and checks the behaviour for the whole kind."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf

from keras_mtl.core.errors import ConfigError, DataError
from keras_mtl.core.paths import runs_dir
from keras_mtl.data.items import AudioItem, Event
from keras_mtl.data.readers import manifest
from keras_mtl.runs.folder import claim_run_folder
from keras_mtl.runs.inputs import check_labels
from keras_mtl.tasks.registry import parse_task_set
from tests.conftest import keras_mtl_command


def _wav(path, seconds=2.0, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.05 * np.random.default_rng(0).standard_normal(int(seconds * rate)).astype(np.float32), rate)
    return path


# ------------------------------------------------- 3. labels are checked against the audio and the splits
def test_frame_manifest_times_in_milliseconds_are_one_error_naming_the_line(tmp_path):
    # r2-A04: every event starts long after its 2 s recording ends
    for k in range(2):
        _wav(tmp_path / f"clip_0{k}.wav")
    (tmp_path / "strong.csv").write_text(
        "filename,onset,offset,event_label\nclip_00.wav,300,900,beep\nclip_01.wav,1200,1500,beep\n"
    )
    with pytest.raises(DataError, match=r"strong\.csv:2: event 'beep' 300-900 s starts after the end of clip_00"):
        manifest.read_frame_manifest(tmp_path / "strong.csv")


def test_an_event_ending_far_past_its_recording_is_refused_and_a_little_past_is_kept(tmp_path):
    # another instance: the onset fits (0 ms) but the offset in milliseconds lies far beyond the end
    _wav(tmp_path / "a.wav")
    (tmp_path / "strong.csv").write_text("filename,onset,offset,event_label\na.wav,0,900,beep\n")
    with pytest.raises(DataError, match=r"strong\.csv:2: .*ends long after the end of a\.wav \(2\.00 s\)"):
        manifest.read_frame_manifest(tmp_path / "strong.csv")
    (tmp_path / "strong.csv").write_text("filename,onset,offset,event_label\na.wav,1.5,2.3,beep\n")  # as in DESED
    assert manifest.read_frame_manifest(tmp_path / "strong.csv")


def test_every_reader_s_events_are_checked_against_their_recordings(tmp_path):
    # another instance: a DESED-layout reader's items (durations from the audio when the layout has none)
    sed = parse_task_set("sed")[0]
    wav = _wav(tmp_path / "Y1.wav", seconds=10.0)
    late = AudioItem(wav, "Y1.wav", events=(Event(10500.0, 12000.0, "Dog"),), tags=("Dog",))
    fine = AudioItem(wav, "Y1.wav", events=(Event(9.0, 10.2, "Dog"),), tags=("Dog",), duration=10.0)
    check_labels(sed, [fine], [fine])
    with pytest.raises(DataError, match=r"Y1\.wav: event 'Dog' 10500-12000 s starts after the end of Y1\.wav"):
        check_labels(sed, [fine], [late])


def test_a_class_with_test_clips_and_no_training_clip_is_named(tmp_path, caplog):
    # r2-A07 (clip manifest) and another instance (a frame task whose class occurs only in the test split)
    rows = ["filename,label,split"]
    for k, (label, split) in enumerate([("low", "train"), ("high", "train"), ("mid", "test"), ("low", "test")]):
        _wav(tmp_path / f"c{k}.wav", seconds=1.0)
        rows.append(f"c{k}.wav,{label},{split}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    items = manifest.read_clip_manifest(tmp_path / "m.csv")
    tone = parse_task_set("tone", {"tone": {"level": "clip", "source": str(tmp_path / "m.csv"), "seconds": 1.0}})[0]
    with caplog.at_level(logging.WARNING):
        check_labels(tone, items["train"], items["test"])
    assert "class 'mid' has 1 test clip(s) and no train clip" in caplog.text
    assert "'low'" not in caplog.text
    sed = parse_task_set("sed")[0]
    wav = _wav(tmp_path / "Y2.wav", seconds=10.0)
    train = [AudioItem(wav, "a", events=(Event(1.0, 2.0, "Dog"),), duration=10.0)]
    test = [AudioItem(wav, "b", events=(Event(1.0, 2.0, "Cat"), Event(3.0, 4.0, "Dog")), duration=10.0)]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_labels(sed, train, test)
    assert "sed: class 'Cat' has 1" in caplog.text and "'Dog'" not in caplog.text


# ------------------------------------------------------------ 1. a run's results are never lost or mixed
def _digest(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_a_finished_run_given_as_output_dir_is_refused_before_data_is_read(tiny_run, tiny_env, tmp_path):
    # r2-A01: another experiment (other task, other seed) into a finished run's folder
    before = _digest(tiny_run.path)
    started = time.monotonic()
    result = subprocess.run(
        [
            *keras_mtl_command(),
            "train",
            "--task-set",
            "asc",
            "--preset",
            "tiny",
            "--epochs",
            "1",
            "--seed",
            "7",
            "--data-root",
            "/nonexistent/data",
            "--output-dir",
            str(tiny_run.path),
        ],
        capture_output=True,
        text=True,
        env=tiny_env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tiny_run.path}: holds a finished run") and "--overwrite" in last
    assert "Traceback" not in result.stderr and time.monotonic() - started < 120
    assert _digest(tiny_run.path) == before  # not a byte changed; the data root was never looked at


def test_an_unfinished_run_folder_is_refused_with_the_resume_hint_and_overwrite_replaces_it(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "config.yaml").write_text("tasks: [asc]\n")
    (run / "export").mkdir()
    (run / "export" / "encoder_step.tflite").write_bytes(b"an older run's export")
    with pytest.raises(ConfigError, match=r"holds an unfinished run \(config\.yaml, checkpoint\).*--resume"):
        claim_run_folder(run, tmp_path / "default")
    assert claim_run_folder(run, tmp_path / "default", overwrite=True) == run
    assert list(run.iterdir()) == []  # the old run is gone with what was derived from it


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path):
    default = tmp_path / "runs" / "20261204-180000-asc-soft"
    folders = [claim_run_folder(None, default) for _ in range(3)]
    assert [f.name for f in folders] == [default.name, f"{default.name}-2", f"{default.name}-3"]
    assert all(f.is_dir() for f in folders)


# ------------------------------------------------------------------ 5. tools count the network that trains
@pytest.mark.parametrize(
    "args",
    [
        ["--preset", "seed004", "--task-set", "asc"],  # r2-B03: Georgiev DNN
        ["--preset", "seed002", "--task-set", "sed"],  # the MTL-VAE
        ["--architecture", "cp_mobile_rnn", "--task-set", "asc,sed"],  # an architecture profile.py did not take
        ["--preset", "board", "--task-set", "asc,sed"],
    ],
)
def test_profile_counts_the_network_training_builds(args, capsys):
    from keras_mtl.cli import profile
    from keras_mtl.cli.train import parse_args, resolve_config
    from keras_mtl.runs.network import build_network
    from keras_mtl.tasks.registry import resolve_tasks

    assert profile.main(args) == 0
    printed = capsys.readouterr().out
    count = int(printed.split("Keras parameter count (incl. non-trainable): ")[1].split()[0].replace(",", ""))
    config = resolve_config(parse_args(args))  # what train.py --dry-run builds
    network = build_network(config, resolve_tasks(list(config.tasks), config.custom_tasks))
    assert count == network.count_params()


def test_profile_refuses_a_builder_option_the_architecture_does_not_have():
    from keras_mtl.cli import profile

    with pytest.raises(ConfigError, match="--shared-blocks is an option of the mtl builder, not of georgiev_dnn"):
        profile.main(["--preset", "seed004", "--task-set", "asc", "--shared-blocks", "1"])


# --------------------------------------------------------------------- 2. every option acts or is refused
@pytest.mark.parametrize(
    "extra",
    [["--epochs", "3"], ["--learning-rate", "0.01"], ["--batch-size", "8"], ["--task-set", "asc"], ["--dry-run"]],
)
def test_options_given_with_resume_are_refused_by_name(extra):
    # r2-A02 (--epochs 3 was silently dropped) and the other options --resume cannot honour
    from keras_mtl.cli.train import parse_args

    with pytest.raises(ConfigError, match=rf"--resume continues RUN with its own config.yaml: {extra[0]} cannot"):
        parse_args(["--resume", "RUN", *extra])
    assert parse_args(["--resume", "RUN", "-q"]).resume == "RUN"  # logging options go with it


# ------------------------------------------------------------------------- 4. derived files are never stale
def test_the_feature_cache_misses_a_file_replaced_with_the_same_name_size_and_mtime(tmp_path):
    # r2-A08: release 2 unpacked over release 1 (other takes of the same length, the archive's dates kept)
    import os

    from keras_mtl.features.cache import FeatureCache
    from keras_mtl.features.logmel import FrontEndConfig

    cache = FeatureCache(tmp_path / "cache", FrontEndConfig())
    wav = _wav(tmp_path / "corpus" / "a.wav", seconds=1.0)
    stat = wav.stat()
    cache.store(wav, 16000, np.ones((101, 128), np.float32))
    assert cache.load(wav, 16000) is not None
    other = tmp_path / "release2.wav"
    sf.write(other, 0.3 * np.sin(np.arange(16000) / 5.0).astype(np.float32), 16000)
    assert other.stat().st_size == stat.st_size
    os.replace(other, wav)  # as unzip -o / tar x do: the new file in place ...
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... with the archive's modification time
    assert wav.stat().st_mtime_ns == stat.st_mtime_ns and wav.stat().st_size == stat.st_size
    assert cache.load(wav, 16000) is None


# ------------------------------------------------------------- 6. operating-system errors are user errors
def test_a_folder_that_cannot_be_written_is_one_error_before_the_work(tmp_path):
    from keras_mtl.core.errors import WriteError
    from keras_mtl.core.fileio import ensure_writable

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(WriteError, match=r"a-file/export: cannot write there \(Not a directory\); pass --output-dir"):
        ensure_writable(blocker / "export", "; pass --output-dir DIR")
    assert ensure_writable(tmp_path / "new" / "folder").is_dir() and not list((tmp_path / "new" / "folder").iterdir())


@pytest.mark.slow
def test_export_into_a_place_that_cannot_be_written_stops_before_calibration(tiny_run, tiny_env, tmp_path):
    # r2-B05 in another form: the export folder cannot be made (a file stands where its parent would be)
    blocker = tmp_path / "results"
    blocker.write_text("")
    started = time.monotonic()
    result = subprocess.run(
        [*keras_mtl_command(), "export", str(tiny_run.path), "--output-dir", str(blocker / "export")],
        capture_output=True,
        text=True,
        env=tiny_env,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1] == f"error: {blocker / 'export'}: cannot write there (Not a directory)"
    )
    assert "calibrat" not in result.stderr.lower() and time.monotonic() - started < 120


def test_any_write_failure_naming_a_file_is_one_error_line(capsys):
    import errno

    from keras_mtl.cli.common import run_main

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/r/metrics.json")

    with pytest.raises(SystemExit) as stop:
        run_main(full_disk)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: /runs/r/metrics.json: No space left on device\n"


# ------------------------------------------- 7. a configuration that cannot be deployed is known before training
@pytest.mark.parametrize(
    ("args", "yaml", "hop"),
    [
        (["--architecture", "cp_mobile_rnn", "--task-set", "asc,sed"], "", 200),  # time pooling 8, 100 frames/s
        (["--architecture", "cp_mobile_rnn", "--task-set", "asc,sed", "--preset", "board"], "", 400),  # 50 frames/s
        (["--task-set", "asc,sed"], "model:\n  pools: [[4, 4], [4, 4], [1, 2], [1, 2], [1, 2]]\n", 200),  # mtl, 16
    ],
    ids=["cp_mobile_rnn", "cp_mobile_rnn-board", "mtl-time-pool-16"],
)
def test_a_network_whose_export_cannot_run_by_the_second_is_refused_before_training(args, yaml, hop, tmp_path):
    # r2-B08's kind: trained first, refused by export afterwards; now train and --dry-run refuse it at once
    # and name a hop that fits, which then passes
    from keras_mtl.cli.train import parse_args, resolve_config
    from keras_mtl.runs.network import check_deployable

    (tmp_path / "given.yaml").write_text(yaml or "{}\n")
    config = resolve_config(parse_args([*args, "--config", str(tmp_path / "given.yaml")]))
    with pytest.raises(ConfigError, match=rf"is not a multiple of \d+, .*frontend\.hop_length: {hop} "):
        check_deployable(config)
    (tmp_path / "fixed.yaml").write_text(f"{yaml}frontend:\n  hop_length: {hop}\n")
    check_deployable(resolve_config(parse_args([*args, "--config", str(tmp_path / "fixed.yaml")])))


def test_a_time_pooling_no_hop_fits_says_so():
    from keras_mtl.features.logmel import FrontEndConfig
    from keras_mtl.runs.network import check_streamable

    with pytest.raises(ConfigError, match="no hop at 16000 Hz gives a multiple of 3 frames a second: change the time"):
        check_streamable(FrontEndConfig(), 3)
    check_streamable(FrontEndConfig(), 4)


@pytest.mark.slow
def test_train_refuses_an_undeployable_network_before_reading_data(tmp_path):
    from tests.test_train_cli import assert_one_line_error, run_train

    out = tmp_path / "run"
    for extra in (["--dry-run"], ["--output-dir", str(out)]):
        result = run_train("--architecture", "cp_mobile_rnn", "--task-set", "asc,sed", *extra, env_dirs=tmp_path)
        assert result.returncode == 2
        assert_one_line_error(result, "pools time by 8", "frontend.hop_length: 200 (12.5 ms, 80 frames a second)")
    assert not out.exists() and not (tmp_path / "data").exists()  # nothing read, nothing written


def test_whole_clip_networks_export_with_any_hop():
    # r2-B08 itself: CP-Mobile's task runs over one whole clip on the device, so 100 frames a second export
    from keras_mtl.deploy.streaming import plan_streaming
    from keras_mtl.features.logmel import FrontEndConfig
    from keras_mtl.models import architectures

    for name, task_set, options in (("cp_mobile", "asc", {"base_channels": 8}), ("georgiev_dnn", "asc", {})):
        tasks = parse_task_set(task_set)
        network = architectures.build(name, tasks, **options)
        factor = architectures.get_architecture(name).time_pool_factor(options)
        plan = plan_streaming(network, tasks, FrontEndConfig(), factor, name)
        assert [p.kind for p in plan.pieces] == ["clip_model"]


@pytest.mark.slow
def test_a_cp_mobile_run_trains_and_exports(tmp_path):
    # r2-B08 end to end: a one-epoch CP-Mobile run on a tone manifest, then export.py
    from tests.test_train_cli import run_train

    folder = tmp_path / "tone"
    folder.mkdir()
    rng, t = np.random.default_rng(0), np.arange(16000) / 16000
    rows = ["filename,label,split"]
    for c, f0 in enumerate((220, 440, 880)):
        for k in range(6):
            sf.write(
                folder / f"t{c}_{k}.wav", 0.3 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(16000), 16000
            )
            rows.append(f"t{c}_{k}.wav,tone{c},{'test' if k >= 4 else 'train'}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    trained = run_train(
        "--task-set", "tone", "--task", f"tone=clip:{folder / 'manifest.csv'}", "--architecture", "cp_mobile",
        "--preset", "tiny", "--epochs", "1", "--output-dir", str(run), env_dirs=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    exported = subprocess.run(
        [*keras_mtl_command(), "export", str(run), "--calibration-clips", "4"],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "KERAS_MTL_DATA_DIR": str(tmp_path / "data"),
            "KERAS_MTL_CACHE_DIR": str(tmp_path / "cache"),
        },
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (run / "export" / "tone_model.tflite").is_file()


def test_a_run_refused_for_its_data_leaves_no_empty_run_folder(tmp_path):
    # a run folder is claimed before the data is read; when the data is refused the empty folder goes too
    from tests.test_train_cli import assert_one_line_error, run_train

    bad = tmp_path / "corpus.csv"
    bad.write_text("filename,scene_label\nmissing.wav,park\n")
    before = set(runs_dir().glob("*-asc-*"))  # the default folder: runs/ of the checkout
    for extra in (["--output-dir", str(tmp_path / "run")], []):
        args = ["--task-set", "asc", "--preset", "tiny", "--epochs", "1", "--data-root", f"asc={bad}", *extra]
        result = run_train(*args, env_dirs=tmp_path)
        assert result.returncode == 2
        assert_one_line_error(result, "corpus.csv")
    assert not (tmp_path / "run").exists() and set(runs_dir().glob("*-asc-*")) == before
