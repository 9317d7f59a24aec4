"""The kinds of failure of the second round of field cases (issue 30; ../shared/field-cases/r2-*):
each test builds its own input and checks the behaviour for the whole kind."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf

from keras_mtl.core.errors import DataError
from keras_mtl.data.items import AudioItem, Event
from keras_mtl.data.readers import manifest
from keras_mtl.runs.inputs import check_labels
from keras_mtl.tasks.registry import parse_task_set


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
