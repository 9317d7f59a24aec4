"""keras-mtl predict: windows cut from a stream, events in bounded memory equal to the whole-recording
post-processing, and the command on a trained run and its export (issue 31)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from keras_mtl.data import stream
from keras_mtl.data.audio import fix_length, load_audio
from keras_mtl.data.items import AudioItem, windows_of
from keras_mtl.tasks import metrics
from keras_mtl.tasks.registry import FrameDetectionTask
from tests.conftest import keras_mtl_command


def _task(median: int = 7, classes=("a", "b", "c")) -> FrameDetectionTask:
    return FrameDetectionTask(
        name="sed", classes=classes, clip_seconds=10.0, corpus="", train_split="", test_split="",
        median_filter_frames=median,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize("seconds", [0.4, 3.0, 10.0, 10.005, 10.5, 25.0, 40.0])
def test_frame_windows_from_blocks_equal_the_evaluation_windows(seconds):
    rate, clip = 100, 10.0  # 100 samples a second keeps the arrays small
    audio = np.random.default_rng(0).standard_normal(int(round(seconds * rate))).astype(np.float32)
    spec = stream.WindowSpec(int(clip * rate), int(clip * rate), "zeros", tiling=True)
    blocks = [audio[i : i + 37] for i in range(0, len(audio), 37)]
    got = [w for _, w in stream.windows(blocks, [spec], rate)]
    item = AudioItem("x.wav", "x", events=(), duration=len(audio) / rate)
    expected = windows_of(item, clip, len(audio) / rate)
    assert len(got) == len(expected)
    for window, item in zip(got, expected):
        start = int(round(item.offset * rate))
        assert window.start == start
        np.testing.assert_array_equal(window.audio, fix_length(audio[start:], spec.length, "zeros"))


@pytest.mark.parametrize(("seconds", "hop", "starts"), [(4.0, 10, [0]), (10.0, 10, [0]), (25.0, 10, [0, 10, 20]),
                                                      (25.0, 5, [0, 5, 10, 15]), (12.0, 30, [0]), (65.0, 30, [0, 30, 60])])  # fmt: skip
def test_clip_windows_step_by_the_hop_and_the_last_reaches_the_end(seconds, hop, starts):
    rate = 100
    audio = np.arange(int(seconds * rate), dtype=np.float32)
    spec = stream.WindowSpec(10 * rate, hop * rate, "repeat")
    got = [w for _, w in stream.windows([audio[i : i + 64] for i in range(0, len(audio), 64)], [spec], rate)]
    assert [w.start / rate for w in got] == starts
    for window in got:
        np.testing.assert_array_equal(window.audio, fix_length(audio[window.start :], spec.length, "repeat"))


def test_the_cutter_keeps_only_what_the_next_windows_need():
    rate = 100
    specs = [stream.WindowSpec(1000, 1000, tiling=True), stream.WindowSpec(200, 100, "repeat")]
    cutter = stream.WindowCutter(specs, rate)
    most = 0
    for _ in range(600):  # an hour at 100 samples a second, in 6 s blocks
        for _ in cutter.feed(np.zeros(600, np.float32)):
            pass
        most = max(most, len(cutter.buffer))
    assert most <= 1000 + 600


def test_blocks_of_a_file_equal_reading_it_whole(tmp_path):
    rng = np.random.default_rng(1)
    stereo = 0.1 * rng.standard_normal((22050 * 3, 2)).astype(np.float32)
    sf.write(tmp_path / "a.wav", stereo, 22050, subtype="FLOAT")
    blocks = list(stream.audio_blocks(tmp_path / "a.wav", 16000, block_seconds=0.7))
    whole = load_audio(tmp_path / "a.wav", 16000)
    joined = np.concatenate(blocks)
    assert abs(len(joined) - len(whole)) <= 1 and max(len(b) for b in blocks) < 0.8 * 16000
    n = min(len(joined), len(whole))
    assert np.max(np.abs(joined[100 : n - 100] - whole[100 : n - 100])) < 1e-3  # soxr streamed vs one call


# ------------------------------------------------------------------------------------- events
@pytest.mark.parametrize("median", [1, 4, 7])
def test_events_in_chunks_equal_the_whole_recording_post_processing(median):
    from keras_mtl.deploy.predict import FrameEvents

    task = _task(median)
    rng = np.random.default_rng(median)
    scores = np.clip(np.cumsum(rng.normal(0, 0.15, (997, 3)), axis=0) % 1.0, 0, 1).astype(np.float32)
    duration, frame_seconds = 997 * 0.04 - 0.01, 0.04
    expected = metrics.frames_to_events(metrics.postprocess(scores, median, 0.5), task.classes, frame_seconds, duration)
    accumulator = FrameEvents(task, frame_seconds)
    cuts = sorted(rng.choice(np.arange(1, 997), size=30, replace=False))
    for part in np.split(scores, cuts):
        accumulator.add(part)
    assert accumulator.finish(997, duration) == expected and expected


def test_an_unreadable_or_missing_file_is_a_data_error_naming_it(tmp_path):
    from keras_mtl.core.errors import DataError

    (tmp_path / "notes.wav").write_text("not audio")
    with pytest.raises(DataError, match="notes.wav: unreadable audio"):
        list(stream.audio_blocks(tmp_path / "notes.wav", 16000))
    with pytest.raises(DataError, match="gone.wav: audio file not found"):
        stream.file_info(tmp_path / "gone.wav")


# --------------------------------------------------------------------- a trained run, its export
def _evaluation_predictions(run_dir, network_scores):
    """{task: [(item, scores)]} of a run's test recordings, computed as evaluation / the export report do."""
    from keras_mtl.runs.folder import open_run
    from keras_mtl.runs.inputs import prepare_data

    run = open_run(run_dir)
    data = prepare_data(run.config, run.tasks)
    return run, {task.name: network_scores(run, task, data.test[task.name]) for task in run.tasks}


def _findings(task, scores, item, frame_seconds):
    if task.level == "clip":
        return task.classes[int(np.argmax(scores))]
    active = metrics.postprocess(scores, task.median_filter_frames, task.threshold)
    return metrics.frames_to_events(active, task.classes, frame_seconds, float(item.duration or task.clip_seconds))


@pytest.mark.slow
def test_predict_on_a_run_gives_the_events_and_labels_evaluation_computed(tiny_run):
    from keras_mtl.deploy.predict import Predictor
    from keras_mtl.models.mtl import task_submodel
    from keras_mtl.training.evaluate import predict_split

    def evaluation(run, task, split):
        path = task_submodel(run.network(), task.name)
        predictions, items = split.whole_recordings(predict_split(path, split, 8))
        return [(item, _findings(task, p, item, split.frame_seconds)) for p, item in zip(predictions, items)]

    run, expected = _evaluation_predictions(tiny_run.path, evaluation)
    predictor = Predictor(tiny_run.path)
    compared = 0
    for task in run.tasks:
        for item, found in expected[task.name]:
            result = predictor.predict_file(item.path)
            got = result.events[task.name] if task.level == "frame" else result.labels[task.name][0]
            assert got == found, (task.name, item.path)
            compared += bool(found)
    assert compared >= 5  # events and labels were really found, not only empty lists


@pytest.mark.slow
def test_predict_on_an_export_gives_the_int8_findings_of_the_export_report(exported):
    from keras_mtl.deploy.export import load_run
    from keras_mtl.deploy.predict import Predictor
    from keras_mtl.deploy.streaming import StreamingRunner
    from keras_mtl.deploy.tflite import Int8Model, int8_call

    report = json.loads((exported / "export_report.json").read_text())
    _, _, _, plan = load_run(report["run"])
    models = {p.name: Int8Model((exported / f"{p.name}.tflite").read_bytes()) for p in plan.pieces}
    runner = StreamingRunner(plan, int8_call(models))

    def int8(run, task, split):  # export.py's int8_streamed predictions of the test clips
        piece = next(p for p in plan.pieces if p.task == task.name)
        return [
            (
                item,
                _findings(
                    task, runner.predict(piece, split.load_features(i).astype(np.float32)), item, split.frame_seconds
                ),
            )
            for i, item in enumerate(split.items)
        ]

    run, expected = _evaluation_predictions(report["run"], int8)
    predictor = Predictor(exported)
    assert predictor.model.kind == "export" and [t.name for t in predictor.tasks] == [t.name for t in run.tasks]
    for task in run.tasks:
        for item, found in expected[task.name]:
            result = predictor.predict_file(item.path)
            got = result.events[task.name] if task.level == "frame" else result.labels[task.name][0]
            assert got == found, (task.name, item.path)


@pytest.mark.slow
def test_the_event_table_read_back_by_sed_eval_gives_the_run_s_event_f1(tiny_run, tmp_path):
    import sed_eval

    from keras_mtl.data.items import merge_overlapping
    from keras_mtl.runs.folder import open_run
    from keras_mtl.runs.inputs import prepare_data

    run = open_run(tiny_run.path)
    sed = next(t for t in run.tasks if t.name == "sed")
    items = prepare_data(run.config, run.tasks).test["sed"].items
    result = subprocess.run(
        [
            *keras_mtl_command(),
            "predict",
            str(tiny_run.path),
            *(str(i.path) for i in items),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=tiny_run.env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "out" / "sed.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    event = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=list(sed.classes), t_collar=0.2, percentage_of_length=0.2
    )
    segment = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=list(sed.classes), time_resolution=1.0)
    for item in items:
        name = os.path.basename(item.path)
        events = merge_overlapping(item.events)
        reference = [{"filename": name, "event_label": e.label, "onset": e.onset, "offset": e.offset} for e in events]
        estimated = [
            {
                "filename": name,
                "event_label": r["event_label"],
                "onset": float(r["onset"]),
                "offset": float(r["offset"]),
            }
            for r in rows
            if r["filename"] == name
        ]
        event.evaluate(reference_event_list=reference, estimated_event_list=estimated)
        segment.evaluate(reference, estimated, evaluated_length_seconds=float(item.duration))
    scored = json.loads((tiny_run.path / "metrics.json").read_text())["tasks"]["sed"]["metrics"]
    for metric, key in ((event, "event_f1_macro"), (segment, "segment_f1_macro")):
        classes = metric.results()["class_wise"]
        with_reference = [c for c in sed.classes if classes[c]["count"]["Nref"]]
        f1 = np.mean([np.nan_to_num(classes[c]["f_measure"]["f_measure"]) for c in with_reference])
        assert f1 == pytest.approx(scored[key], abs=1e-9), key
    assert scored["segment_f1_macro"] > 0  # a figure that says something
    report = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert report["failed"] == 0 and report["files_total"] == len(items) and report["model_kind"] == "run"


@pytest.mark.slow
def test_plots_scores_a_file_that_is_not_audio_and_a_long_recording(tiny_run, tmp_path, monkeypatch):
    from keras_mtl.cli import predict as cli

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    rate, rng = 22050, np.random.default_rng(0)
    sf.write(folder / "sub" / "long.flac", 0.05 * rng.standard_normal((rate * 95, 2)), rate)  # stereo, 22.05 kHz
    sf.write(folder / "short.wav", 0.05 * rng.standard_normal(rate // 2), rate)
    (folder / "notes.wav").write_text("not audio")
    (folder / "readme.txt").write_text("not a recording: not taken")
    monkeypatch.setattr("keras_mtl.data.audio.load_audio", lambda *a, **k: pytest.fail("read whole"))
    code = cli.main(
        [str(tiny_run.path), str(folder), "--output", str(tmp_path / "out"), "--plot", "--scores", "--hop", "0.5"]
    )
    assert code == 1  # one recording failed, the others went on
    report = json.loads((tmp_path / "out" / "predict.json").read_text())
    status = {f["name"]: f["status"] for f in report["files"]}
    assert status == {"notes.wav": "failed", "short.wav": "ok", "sub/long.flac": "ok"}
    assert "notes.wav: unreadable audio" in next(f["error"] for f in report["files"] if f["status"] == "failed")
    assert (tmp_path / "out" / "plots" / "sub__long.flac.png").stat().st_size > 10_000
    scores = (tmp_path / "out" / "scores" / "sed" / "sub" / "long.tsv").read_text().splitlines()
    assert scores[0].split("\t")[:3] == ["onset", "offset", "Alarm_bell_ringing"]
    assert float(scores[-1].split("\t")[1]) == pytest.approx(95.0)
    windows = [r for r in csv.DictReader(open(tmp_path / "out" / "asc_windows.tsv"), delimiter="\t")]
    long = [r for r in windows if r["filename"] == "sub/long.flac"]
    assert len(long) == 189 and float(long[-1]["offset"]) == pytest.approx(95.0)  # 1 s windows every 0.5 s
    from keras_mtl.core.errors import ConfigError

    with pytest.raises(ConfigError, match="holds earlier predictions"):  # results are never mixed
        cli.main([str(tiny_run.path), str(folder / "short.wav"), "--output", str(tmp_path / "out")])


@pytest.mark.slow
def test_live_prints_findings_from_a_replaced_input_stream(tiny_run):
    from keras_mtl.deploy.predict import Predictor

    rate = 16000
    audio = (0.05 * np.random.default_rng(2).standard_normal(rate * 23)).astype(np.float32)
    lines = []
    predictor = Predictor(tiny_run.path)
    result = predictor.live((audio[i : i + 8000] for i in range(0, len(audio), 8000)), write=lines.append, seconds=21)
    assert result.seconds == pytest.approx(21.0)
    windows = [line for line in lines if " asc: " in line]
    assert (
        len(windows) == 21 and windows[0].startswith("0.00-1.00 s  asc: ") and windows[-1].startswith("20.00-21.00 s")
    )
    assert result.labels["asc"][0] in predictor.tasks[0].classes


def test_live_without_an_input_device_is_one_error_line(tmp_path):
    # this machine and CI have no microphone (and often no PortAudio): one error line, exit 2
    from keras_mtl.core.errors import DataError
    from keras_mtl.deploy.predict import microphone_blocks

    try:
        blocks = microphone_blocks(16000)
    except DataError as error:
        assert str(error).startswith("no audio input")
    else:  # a machine with a microphone: the stream gives blocks
        assert next(blocks).dtype == np.float32


def test_predict_options_that_do_not_go_together_are_refused():
    from keras_mtl.cli import predict as cli
    from keras_mtl.core.errors import ConfigError

    for args, message in (
        (["RUN"], "give INPUT recordings"),
        (["RUN", "a.wav", "--live"], "--live listens to the microphone"),
        (["RUN", "a.wav", "--seconds", "3"], "--seconds goes with --live"),
    ):
        with pytest.raises(ConfigError, match=message):
            cli.main(args)


@pytest.mark.slow
def test_an_hour_long_recording_is_read_in_bounded_memory(tiny_run, tmp_path, monkeypatch):
    # generated here (115 MB of 16-bit audio); the recording is never held whole: the window cutter keeps
    # at most the longest window plus one block, and the output grows only with the findings
    from keras_mtl.deploy.predict import Predictor
    from keras_mtl.studies.predict_speed import write_recording

    write_recording(tmp_path / "hour.wav", 3600.0, 16000)
    most = {"buffer": 0, "block": 0}
    feed = stream.WindowCutter.feed

    def watched(self, block):
        most["block"] = max(most["block"], len(block))
        yield from feed(self, block)
        most["buffer"] = max(most["buffer"], len(self.buffer))

    monkeypatch.setattr(stream.WindowCutter, "feed", watched)
    result = Predictor(tiny_run.path).predict_file(tmp_path / "hour.wav")
    assert result.seconds == pytest.approx(3600.0)
    assert len(result.windows["asc"]) == 3600  # 1 s windows
    assert most["block"] <= stream.BLOCK_SECONDS * 16000 and most["buffer"] <= 10 * 16000 + most["block"]


# ------------------------------------------------------ a stand-in model: the recording's edges
class _SilenceDetector:
    """A model stand-in: one frame task whose score is high where the log-mel is near the floor
    (silence, and the zero padding beyond a recording's end), so padded frames would make events."""

    kind, batched, path, description = "stand-in", True, "stand-in", "stand-in"

    def __init__(self, clip_seconds=10.0):
        from keras_mtl.features.logmel import FrontEndConfig

        self.tasks = [_task(7, ("quiet",)).__class__(**{**_task(7, ("quiet",)).__dict__, "clip_seconds": clip_seconds})]
        self.frontend = FrontEndConfig()
        self.frame_seconds = 0.04

    def scores(self, tasks, features):
        level = (
            features[:, : features.shape[1] // 4 * 4].reshape(len(features), -1, 4, features.shape[2]).mean(axis=(2, 3))
        )
        return {tasks[0].name: (1.0 / (1.0 + np.exp(level + 8.0)))[..., None]}


class _FeatureEcho(_SilenceDetector):
    """A stand-in with a frame task (10 s windows) and a clip task (1 s windows) whose scores are sums of
    the features they get: any feature value that differs shows in them."""

    def __init__(self):
        super().__init__()
        from keras_mtl.tasks.registry import ClipClassificationTask

        self.tasks.append(
            ClipClassificationTask(
                name="scene",
                classes=("x", "y"),
                clip_seconds=1.0,
                corpus="",
                train_split="",
                test_split="",
            )  # fmt: skip
        )

    def scores(self, tasks, features):
        out = {}
        for task in tasks:
            if task.level == "clip":
                weights = np.arange(features.shape[1] * features.shape[2], dtype=np.float64) % 7 + 1
                flat = features.reshape(len(features), -1).astype(np.float64)
                out[task.name] = np.stack([flat.sum(axis=1), flat @ weights], axis=1)
            else:
                out.update(super().scores([task], features))
        return out


@pytest.mark.parametrize("hop", [None, 0.5, 0.33, 0.3337])
def test_clip_windows_sharing_the_frame_task_s_frames_get_the_features_they_would_compute(hop, monkeypatch):
    # 0.3337 s is not a whole number of hops: windows after the first compute their own; the last are padded
    from keras_mtl.deploy.predict import Predictor
    from keras_mtl.features.logmel import LogMel

    edges = []
    frames = LogMel.frames
    monkeypatch.setattr(LogMel, "frames", lambda self, segments: edges.append(len(segments)) or frames(self, segments))

    rng = np.random.default_rng(3)
    audio = (0.1 * rng.standard_normal(int(23.37 * 16000)) * np.linspace(0.01, 1, int(23.37 * 16000))).astype("f4")
    blocks = [audio[i : i + 7001] for i in range(0, len(audio), 7001)]
    shared = Predictor(_FeatureEcho(), hop=hop).run_stream(iter(blocks), keep_scores=True)
    assert edges  # windows took the frame task's frames (but their edges); at 0.3337 s only the first one
    own = Predictor(_FeatureEcho(), hop=hop, share_frames=False).run_stream(iter(blocks), keep_scores=True)
    assert len(shared.windows["scene"]) == len(own.windows["scene"]) > 20
    for a, b in zip(shared.windows["scene"], own.windows["scene"]):
        assert a[:2] == b[:2] and np.array_equal(a[-1], b[-1])  # onset, offset, the window's scores
    assert np.array_equal(shared.labels["scene"][1], own.labels["scene"][1])
    assert np.array_equal(shared.scores["sed"], own.scores["sed"]) and shared.events == own.events


def test_level_normalised_windows_get_the_features_training_computes():
    """level_seconds > 0: every window is level-normalised from its own first frame, as the feature
    cache normalises a training clip (LogMel on the window, float16), whether its frames were lent by
    the frame task's window or computed; and a recording 20 dB quieter gets the same scores."""
    from keras_mtl.deploy.predict import Predictor
    from keras_mtl.features.logmel import FrontEndConfig, LogMel

    rng = np.random.default_rng(5)
    audio = (0.1 * rng.standard_normal(int(21.5 * 16000)) * np.linspace(0.05, 1, int(21.5 * 16000))).astype("f4")
    model = _FeatureEcho()
    model.frontend = FrontEndConfig(level_seconds=2.0)
    result = Predictor(model, hop=0.5).run_stream(iter([audio]), keep_scores=True)
    logmel = LogMel(model.frontend, float16_values=True)
    rows = result.windows["scene"]
    assert len(rows) > 30
    for row in rows[::7]:
        onset, scores = row[0], row[-1]
        start = int(round(onset * 16000))
        if start + 16000 <= len(audio):
            expected = model.scores([model.tasks[1]], logmel(audio[None, start : start + 16000]))["scene"][0]
            assert np.array_equal(scores, expected)
    quieter = Predictor(model, hop=0.5).run_stream(iter([0.1 * audio]), keep_scores=True)
    assert np.abs(quieter.scores["sed"] - result.scores["sed"]).max() < 1e-3
    assert all(np.allclose(a[-1], b[-1], rtol=1e-3) for a, b in zip(rows, quieter.windows["scene"]))


@pytest.mark.parametrize("seconds", [25.3, 24.99, 7.0, 30.0])
def test_events_end_with_the_recording_as_evaluation_cuts_it(seconds):
    from keras_mtl.deploy.predict import Predictor
    from keras_mtl.features.logmel import LogMel

    rate = 16000
    audio = (0.1 * np.random.default_rng(3).standard_normal(int(seconds * rate))).astype(np.float32)
    audio[int(3 * rate) : int(4 * rate)] = 0.0  # a silent stretch: one event inside
    audio[-int(0.3 * rate) :] = 0.0  # silence up to the very end: an event that ends with the recording
    model = _SilenceDetector()
    result = Predictor(model).run_stream([audio[i : i + 7000] for i in range(0, len(audio), 7000)])
    # evaluation: every window's scores, stitched, cut to the recording, then post-processed
    task, logmel = model.tasks[0], LogMel(model.frontend)
    spec = stream.WindowSpec(10 * rate, 10 * rate, "zeros", tiling=True)
    parts = []
    for _, window in stream.windows([audio], [spec], rate):
        features = logmel(window.audio[None]).astype(np.float16).astype(np.float32)
        parts.append(model.scores([task], features)[task.name][0][:250])
    frames = int(np.ceil(seconds / 0.04 - 1e-6))
    stitched = np.concatenate(parts)[:frames]
    expected = metrics.frames_to_events(metrics.postprocess(stitched, 7, 0.5), task.classes, 0.04, seconds)
    assert result.events[task.name] == expected
    assert expected[-1][1] == pytest.approx(seconds) and len(expected) >= 2


def test_names_stay_inside_the_output_and_apart(tmp_path):
    from keras_mtl.deploy.predict import collect_inputs, inside_name

    assert inside_name("sub/a.wav") == "sub/a.wav"
    assert not Path(inside_name("/data/rec/a.wav")).is_absolute() and ".." not in Path(inside_name("../x/a.wav")).parts
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        sf.write(tmp_path / folder / "a.wav", np.zeros(1600, np.float32), 16000)
    found = collect_inputs([tmp_path / "one" / "a.wav", tmp_path / "two" / "a.wav"])
    assert [name for _, name in found] == ["a.wav", str(tmp_path / "two" / "a.wav")]
    (tmp_path / "bad.csv").write_bytes(b"filename\n\xff\xfe\x00 not text\n")
    from keras_mtl.core.errors import ConfigError

    with pytest.raises(ConfigError, match="bad.csv: not a readable manifest"):
        collect_inputs([tmp_path / "bad.csv"])


def test_overwrite_removes_only_what_earlier_predictions_wrote(tmp_path):
    from keras_mtl.cli.predict import results_folder

    out = tmp_path / "results"
    (out / "scores" / "sed").mkdir(parents=True)
    for name in ("sed.tsv", "asc.tsv", "asc_windows.tsv", "my_manifest.tsv", "notes.txt"):
        (out / name).write_text("x")
    (out / "predict.json").write_text(json.dumps({"tasks": {"sed": {"name": "sed"}, "asc": {"name": "asc"}}}))
    from keras_mtl.core.errors import ConfigError

    with pytest.raises(ConfigError, match="holds earlier predictions"):
        results_folder(str(out), "RUN", overwrite=False)
    assert results_folder(str(out), "RUN", overwrite=True) == out
    assert sorted(p.name for p in out.iterdir()) == ["my_manifest.tsv", "notes.txt"]
