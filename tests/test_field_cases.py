"""The six kinds of data failure replayed from users' reports (issue 18; ../shared/field-cases/):
each test builds its own input and asserts the expected behaviour for the whole kind."""

from __future__ import annotations

import json
import logging
import subprocess

import numpy as np
import pytest
import soundfile as sf

from keras_mtl.core.errors import ConfigError, DataError
from keras_mtl.data.items import AudioItem, Event, merge_overlapping, windows_of
from keras_mtl.data.readers import common_voice, desed, manifest, tables, tau22
from keras_mtl.tasks import metrics
from keras_mtl.tasks.registry import corpus_task, parse_task_set, resolve_tasks, safe_name

FS = 0.04  # output frame seconds


def _wav(path, seconds=1.0, rate=16000, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, 0.05 * rng.standard_normal(int(seconds * rate)).astype(np.float32), rate)
    return path


def _scores(n, spans, classes=2):
    p = np.zeros((n, classes), np.float32)
    for column, start, stop in spans:
        p[int(start / FS) : int(stop / FS), column] = 0.9
    return p


# ------------------------------------------------------------------ 1. averages that hide classes
def test_macro_averages_count_a_class_never_detected_as_zero():
    classes = ["Dog", "Speech", "Cat"]  # Cat: no reference events anywhere
    items = [
        AudioItem(f"c{k}.wav", f"c{k}.wav", duration=10.0, events=(Event(1.0, 3.0, "Dog"), Event(5.0, 8.0, "Speech")))
        for k in range(4)
    ]
    preds = [_scores(250, [(0, 1.0, 3.0)], 3) for _ in items]  # every Dog exact, Speech never
    m = metrics.sed_metrics(preds, items, classes, FS, 10.0)
    assert m["class_event_f1"] == {"Dog": 1.0, "Speech": 0.0, "Cat": None}
    assert m["event_f1_macro"] == pytest.approx(0.5)
    assert m["segment_f1_macro"] == pytest.approx(0.5)
    assert m["classes_never_detected"] == ["Speech"]
    assert m["classes_without_reference"] == ["Cat"]
    assert m["event_f1_macro_sed_eval"] == pytest.approx(1.0)  # sed_eval's own average, kept beside
    assert m["class_psds1"]["Speech"] == 0.0 and m["class_psds1"]["Dog"] > 0.5
    assert m["psds1"] == pytest.approx(0.0, abs=1e-6) and "alpha_st=1" in m["psds1_note"]


# ------------------------------------------------------------------ 2. labels the metrics reject
def test_overlapping_same_class_events_are_merged_when_read(tmp_path, caplog):
    root = tmp_path / "desed"
    audio = root / "audio/validation/validation_16k"
    _wav(audio / "Yval_001.wav", 0.5)
    meta = root / "metadata/validation"
    meta.mkdir(parents=True)
    (meta / "validation.tsv").write_text(
        "filename\tonset\toffset\tevent_label\n"
        "Yval_001.wav\t1.0\t4.0\tSpeech\n"
        "Yval_001.wav\t3.0\t6.0\tSpeech\n"
        "Yval_001.wav\t3.5\t5.0\tDog\n"
    )
    (meta / "validation_durations.tsv").write_text("filename\tduration\nYval_001.wav\t10.0\n")
    with caplog.at_level(logging.WARNING):
        (item,) = desed.read_desed(root, "validation")
    assert item.events == (Event(1.0, 6.0, "Speech"), Event(3.5, 5.0, "Dog"))
    assert "merged 1 overlapping same-class event" in caplog.text
    # the metrics merge too, whatever made the items: PSDS never meets them
    raw = AudioItem("x.wav", "x.wav", duration=10.0, events=(Event(1, 4, "Speech"), Event(3, 6, "Speech")))
    m = metrics.sed_metrics([_scores(250, [(0, 1.0, 6.0)], 1)], [raw], ["Speech"], FS, 10.0)
    assert m["event_f1_macro"] == 1.0 and m["psds1"] > 0.5
    assert merge_overlapping([Event(0, 1, "a"), Event(1, 2, "a"), Event(5, 6, "a")]) == (
        Event(0, 2, "a"),
        Event(5, 6, "a"),
    )


@pytest.mark.slow
def test_an_evaluation_failure_keeps_the_trained_run(tmp_path, monkeypatch, tiny_env):
    from keras_mtl.core.errors import EvaluationError
    from keras_mtl.runs.config import build, load_preset, merge
    from keras_mtl.training import evaluate, fit

    out = tmp_path / "run"
    config = build(merge(load_preset("tiny"), {"tasks": ["sed"], "output_dir": str(out), "training": {"epochs": 1}}))

    def broken(*args, **kwargs):
        raise AssertionError("Connected/overlapping Speech events found for clip Yval_001.wav")

    monkeypatch.setattr(fit, "evaluate_tasks", broken)
    with pytest.raises(EvaluationError, match=r"network is saved.*keras-mtl evaluate") as raised:
        fit.train(config)
    assert "\n" not in str(raised.value)
    assert {"model.keras", "history.csv", "training.json", "checkpoint"} <= {p.name for p in out.iterdir()}
    assert not (out / "metrics.json").exists()
    monkeypatch.undo()
    result = evaluate.evaluate_run(out)
    written = json.loads((out / "metrics.json").read_text())
    assert written["tasks"]["sed"]["metrics"]["n_clips"] == result["tasks"]["sed"]["metrics"]["n_clips"] > 0
    assert written["strategy"] == "soft" and written["epochs"] == 1  # the facts training saved


# ------------------------------------------------------------------ 3. tables read with the wrong rules
def _common_voice(root, sentences):
    rows = ["client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender"]
    for k, sentence in enumerate(sentences):
        _wav(root / "clips" / f"c{k}.wav", 0.2, seed=k)
        rows.append(f"id{k}\tc{k}.wav\t{sentence}\t2\t0\ttwenties\t{'female' if k % 2 else 'male'}")
    (root / "train.tsv").write_text("\n".join(rows) + "\n")


def test_common_voice_quotes_are_text_and_every_line_is_a_row(tmp_path):
    sentences = [f"sentence {k}" for k in range(40)]
    sentences[6] = '"An opening quote that never closes'
    sentences[9] = 'She said "hi", then left.'
    _common_voice(tmp_path, sentences)
    items = common_voice.read_common_voice(tmp_path, "train", "gender")
    assert len(items) == 40


def test_csv_manifests_use_standard_quoting_and_an_unbalanced_quote_names_its_line(tmp_path):
    for name in ("a.wav", "b, c.wav", "d.wav"):
        _wav(tmp_path / name, 0.2)
    (tmp_path / "m.csv").write_text('filename,label\na.wav,door\n"b, c.wav","knock, loud"\nd.wav,door\n')
    split = manifest.read_clip_manifest(tmp_path / "m.csv")
    labels = sorted(i.label for s in split.values() for i in s)
    assert labels == ["door", "door", "knock, loud"]
    (tmp_path / "bad.csv").write_text('filename,label\na.wav,door\n"d.wav,door\nd.wav,door\n')
    with pytest.raises(DataError, match=r"bad\.csv:3: unbalanced double quote"):
        manifest.read_clip_manifest(tmp_path / "bad.csv")


# ------------------------------------------------------------------ 4. delimiters
def _tau(root, delimiter="\t"):
    rows = []
    for k, scene in enumerate(("airport", "bus", "park", "airport", "bus", "park")):
        name = f"audio/{scene}-lisbon-{k}-0-a.wav"
        _wav(root / name, 0.3, seed=k)
        rows.append((name, scene))
    (root / "meta.csv").write_text("filename\tscene_label\n" + "".join(f"{n}\t{s}\n" for n, s in rows))
    (root / "evaluation_setup").mkdir()
    for split, part in (("train", rows[:3]), ("evaluate", rows[3:])):
        text = f"filename{delimiter}scene_label\n" + "".join(f"{n}{delimiter}{s}\n" for n, s in part)
        (root / f"evaluation_setup/fold1_{split}.csv").write_text(text)


@pytest.mark.parametrize("delimiter", ["\t", ",", ";"], ids=["tab", "comma", "semicolon"])
def test_dcase_tables_take_tab_comma_or_semicolon(tmp_path, delimiter):
    _tau(tmp_path, delimiter)
    assert [i.label for i in tau22.read_tau22(tmp_path, "train")] == ["airport", "bus", "park"]


def test_a_format_with_one_delimiter_names_the_one_it_expected_and_the_one_it_found(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "train.tsv").write_text("client_id,path,sentence,age,gender\nid,c0.wav,hello,twenties,male\n")
    with pytest.raises(DataError, match=r"train\.tsv:1: a Common Voice tsv is tab-separated, but this header is comma"):
        common_voice.read_common_voice(tmp_path, "train", "gender")
    (tmp_path / "t.tsv").write_text("filename\tlabel\na.wav\tx\n")
    with pytest.raises(DataError, match=r"t\.tsv:1: missing column\(s\) scene_label \(header read as tab-separated"):
        tables.read_table(tmp_path / "t.tsv", required=("filename", "scene_label"))


# ------------------------------------------------------------------ 5. a user's names
def test_any_task_name_gets_a_safe_form_and_collisions_are_caught_before_data_is_read(tmp_path):
    assert safe_name("door knock") == "door_knock"
    assert safe_name("2nd mic") == "task_2nd_mic"
    assert safe_name("Café/Bar") == "cafe_bar"
    assert safe_name("стук").startswith("task_") and safe_name("стук") != safe_name("звон")
    missing = str(tmp_path / "never-read.csv")
    with pytest.raises(ConfigError, match=r"'door knock' and 'door_knock' both become 'door_knock'"):
        resolve_tasks(
            ["door knock", "door_knock"], {"door knock": {"manifest": missing}, "door_knock": {"manifest": missing}}
        )


def test_c_label_strings_keep_any_text():
    import shutil

    from keras_mtl.deploy.c_arrays import c_string

    text = 'door "knock" \\ ?? стук'
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "t.c"
        source.write_text(f"#include <stdio.h>\nint main(void) {{ fputs({c_string(text)}, stdout); return 0; }}\n")
        subprocess.run([compiler, "-o", str(Path(folder) / "t"), str(source)], check=True)
        shown = subprocess.run([str(Path(folder) / "t")], capture_output=True, check=True).stdout
    assert shown.decode("utf-8") == text


# ------------------------------------------------------------------ 6. recordings longer than the clip
def test_long_recordings_become_windows_and_are_scored_whole(tmp_path):
    from keras_mtl.data.pipeline import FeatureExtractor
    from keras_mtl.features.logmel import FrontEndConfig
    from keras_mtl.tasks.registry import manifest_task

    rows = ["filename,onset,offset,event_label,split"]
    for k in range(2):
        _wav(tmp_path / f"long{k}.wav", 25.0, seed=k)
        rows += [
            f"long{k}.wav,2.0,3.0,beep,test",
            f"long{k}.wav,9.5,11.0,beep,test",
            f"long{k}.wav,21.0,22.0,beep,test",
        ]
    _wav(tmp_path / "short.wav", 4.0)
    rows.append("short.wav,1.0,2.0,beep,train")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    task = manifest_task("beep", "frame", tmp_path / "m.csv")
    assert task.clip_seconds == 10.0
    test_items = manifest.read_frame_manifest(tmp_path / "m.csv")["test"]
    windows = windows_of(test_items[0], 10.0, 25.0)
    assert [w.offset for w in windows] == [0.0, 10.0, 20.0] and [w.duration for w in windows] == [10.0, 10.0, 5.0]
    assert windows[0].events == (Event(2.0, 3.0, "beep"), Event(9.5, 10.0, "beep"))
    assert windows[1].events == (Event(0.0, 1.0, "beep"),)
    split = FeatureExtractor(FrontEndConfig(), tmp_path / "cache").prepare(task, "test", test_items, 4)
    assert len(split) == 6 and split.recording_index == [0, 0, 0, 1, 1, 1]
    assert not np.allclose(split.load_features(0), split.load_features(1))  # each window its own audio
    perfect = [t for t in split.targets]  # a model perfect on every window
    predictions, items = split.whole_recordings(perfect)
    assert [len(p) for p in predictions] == [625, 625] and items == split.recordings
    m = task.evaluate(predictions, items, split.frame_seconds)
    assert m["event_f1_macro"] == 1.0 and m["n_clips"] == 2 and m["seconds_scored"] == 50.0


def test_predictions_shorter_than_their_reference_are_scored_on_what_they_cover(caplog):
    item = AudioItem("r.wav", "r.wav", duration=30.0, events=(Event(5.0, 7.0, "beep"), Event(20.0, 22.0, "beep")))
    with caplog.at_level(logging.WARNING):
        m = metrics.sed_metrics([_scores(250, [(0, 5.0, 7.0)], 1)], [item], ["beep"], FS, 10.0)
    assert m["event_f1_macro"] == 1.0 and m["seconds_scored"] == 10.0
    assert "scored over the predicted part only" in caplog.text


# ------------------------------------------------------------------ 9. corpus layouts, the data's labels
def test_a_task_over_a_corpus_layout_takes_the_labels_of_the_data(tmp_path):
    _tau(tmp_path)
    with pytest.raises(DataError, match=r"unknown scene label 'park'.*--task NAME=tau22:"):
        tau22.read_tau22(tmp_path, "train", classes=("airport", "bus"))
    task = corpus_task("my scenes", "tau22", tmp_path)
    assert (task.name, task.title, task.classes, task.corpus) == (
        "my_scenes",
        "my scenes",
        ("airport", "bus", "park"),
        "tau22",
    )
    fixed = corpus_task("my scenes", "tau22", tmp_path, classes=["park", "bus", "airport", "tram"])
    assert fixed.classes == ("park", "bus", "airport", "tram")
    with pytest.raises(ConfigError, match=r"label\(s\) 'park' outside its classes"):
        corpus_task("s", "tau22", tmp_path, classes=["airport", "bus"])
    (task2,) = parse_task_set("my scenes", {"my scenes": {"level": "tau22", "source": str(tmp_path)}})
    assert task2.classes == task.classes and task2.source == str(tmp_path)


def test_a_desed_layout_with_another_event_set_keeps_its_weak_and_unlabelled_splits(tiny_corpus, tmp_path):
    import shutil

    root = tmp_path / "office"
    shutil.copytree(tiny_corpus / "desed", root)
    rename = {"Speech": "door knock", "Dog": "keys, jingling"}
    for tsv in (root / "metadata").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        out = []
        for line in lines:
            fields = line.split("\t")
            if "event_labels" not in lines[0]:
                fields = [rename.get(f, f) for f in fields]
            else:  # weak: a comma list, so a label with a comma cannot be a weak tag; drop it there
                fields = [
                    ",".join(t for t in f.split(",") if t != "Dog").replace("Speech", "door knock") for f in fields
                ]
            out.append("\t".join(fields))
        tsv.write_text("\n".join(out) + "\n")
    with pytest.raises(DataError, match=r"unknown event label .*--task NAME=desed:DIR"):
        desed.read_desed(root, "synthetic_train")
    task = corpus_task("office", "desed", root)
    assert "door knock" in task.classes and "Speech" not in task.classes
    assert (task.weak_split, task.unlabeled_split) == ("weak", "unlabeled")
    assert desed.read_desed(root, "weak", task.classes) and desed.read_desed(root, "unlabeled", task.classes)


# ------------------------------------------------------------------ the cases through the command line
def _train_manifest_task(name: str, level: str, rows: list[str], env, tmp_path):
    """Write ``rows`` as a manifest, train a tiny one-epoch task ``name`` from it through the command line;
    (the completed process, metrics.json) once it succeeded."""
    from tests.conftest import keras_mtl_command

    manifest, out = tmp_path / "manifest.csv", tmp_path / "run"
    manifest.write_text("\n".join(rows) + "\n")
    args = ["--task-set", name, "--task", f"{name}={level}:{manifest}", "--output-dir", str(out)]
    result = subprocess.run(
        [*keras_mtl_command(), "train", "--preset", "tiny", "--epochs", "1", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_cli_a_task_named_with_spaces_keeps_its_text(tmp_path, tiny_env):
    rows = ["filename,label"]
    for k in range(12):
        label = "door knock" if k % 2 else 'glass "break"'
        _wav(tmp_path / f"c{k}.wav", 0.5, seed=k)
        rows.append(f'c{k}.wav,"{label.replace(chr(34), chr(34) * 2)}"')
    result, written = _train_manifest_task("Door Knock", "clip", rows, tiny_env, tmp_path)
    assert list(written["tasks"]) == ["Door Knock"] and written["tasks"]["Door Knock"]["name"] == "door_knock"
    assert set(written["tasks"]["Door Knock"]["metrics"]["class_accuracy"]) == {"door knock", 'glass "break"'}
    assert "Door Knock" in result.stdout and "Door Knock/train: " in result.stderr


@pytest.mark.slow
def test_cli_long_recordings_are_trained_and_scored_whole(tmp_path, tiny_env):
    rows = ["filename,onset,offset,event_label,split"]
    for k in range(6):
        _wav(tmp_path / f"rec{k}.wav", 30.0, seed=k)
        split = "test" if k < 2 else "train"
        rows += [f"rec{k}.wav,{t},{t + 1.5},beep,{split}" for t in (3.0, 14.0, 26.0)]
    result, written = _train_manifest_task("beep", "frame", rows, tiny_env, tmp_path)
    assert "4 recordings longer than 10.0 s split into 12 windows" in result.stderr
    m = written["tasks"]["beep"]["metrics"]
    assert m["n_clips"] == 2 and m["seconds_scored"] == 60.0
