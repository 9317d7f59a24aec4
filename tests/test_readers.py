"""Corpus readers on hand-written files: DESED/TAU22 layouts and one clear error per bad case."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from keras_mtl.core.errors import DataError
from keras_mtl.data.audio import load_audio
from keras_mtl.data.items import Event
from keras_mtl.data.readers import desed, tau22


def _wav(path, seconds=1.0, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.1 * np.sin(2 * np.pi * 440 * t), rate)


def _desed_root(tmp_path, strong_tsv: str):
    root = tmp_path / "desed"
    audio = root / "audio/validation/validation_16k"
    for name in ("Y1_0.000_10.000.wav", "Y2_30.000_40.000.wav", "Y3_0.000_7.500.wav"):
        _wav(audio / name, 0.5)
    meta = root / "metadata/validation"
    meta.mkdir(parents=True)
    (meta / "validation.tsv").write_text(strong_tsv)
    (meta / "validation_durations.tsv").write_text(
        "filename\tduration\nY1_0.000_10.000.wav\t10.0\nY2_30.000_40.000.wav\t10.0\nY3_0.000_7.500.wav\t7.5\n"
    )
    return root


GOOD_TSV = (
    "filename\tonset\toffset\tevent_label\n"
    "Y1_0.000_10.000.wav\t0.512\t3.250\tSpeech\n"
    "Y1_0.000_10.000.wav\t2.000\t9.981\tVacuum_cleaner\n"
    "Y2_30.000_40.000.wav\t5.1\t5.9\tDog\n"
)


def test_hand_written_desed_validation_is_read_correctly(tmp_path):
    items = desed.read_desed(_desed_root(tmp_path, GOOD_TSV), "validation")
    by_key = {i.key: i for i in items}
    assert list(by_key) == ["Y1_0.000_10.000.wav", "Y2_30.000_40.000.wav", "Y3_0.000_7.500.wav"]
    assert by_key["Y1_0.000_10.000.wav"].events == (Event(0.512, 3.25, "Speech"), Event(2.0, 9.981, "Vacuum_cleaner"))
    assert by_key["Y2_30.000_40.000.wav"].events == (Event(5.1, 5.9, "Dog"),)
    assert by_key["Y3_0.000_7.500.wav"].events == ()  # listed in durations, no events
    assert by_key["Y3_0.000_7.500.wav"].duration == 7.5


def test_onset_after_offset_names_file_and_line(tmp_path):
    bad = GOOD_TSV + "Y2_30.000_40.000.wav\t6.0\t5.0\tDog\n"
    with pytest.raises(DataError, match=r"validation\.tsv:5: onset 6\.0 is after offset 5\.0"):
        desed.read_desed(_desed_root(tmp_path, bad), "validation")
    zero = GOOD_TSV + "Y2_30.000_40.000.wav\t5.0\t5.0\tDog\n"
    with pytest.raises(DataError, match=r"validation\.tsv:5: onset equals offset \(5\.0\): a zero-length event"):
        desed.read_desed(_desed_root(tmp_path / "zero", zero), "validation")


def test_unknown_class_names_file_and_line(tmp_path):
    bad = GOOD_TSV.replace("\tDog\n", "\tUnicorn\n")
    with pytest.raises(DataError, match=r"validation\.tsv:4: unknown event label 'Unicorn'"):
        desed.read_desed(_desed_root(tmp_path, bad), "validation")


def test_non_numeric_onset_and_missing_column(tmp_path):
    with pytest.raises(DataError, match=r"validation\.tsv:2: onset 'abc' is not a number"):
        desed.read_desed(_desed_root(tmp_path, GOOD_TSV.replace("0.512", "abc")), "validation")
    with pytest.raises(DataError, match=r"missing column\(s\) event_label"):
        desed.read_desed(_desed_root(tmp_path / "x", GOOD_TSV.replace("event_label", "label")), "validation")


def test_weak_tsv_and_wrong_layout(tmp_path):
    root = tmp_path / "desed"
    _wav(root / "audio/train/weak_16k/a.wav")
    _wav(root / "audio/train/weak_16k/b.wav")
    (root / "metadata/train").mkdir(parents=True)
    (root / "metadata/train/weak.tsv").write_text("filename\tevent_labels\na.wav\tDog,Speech\nb.wav\tCat\n")
    items = desed.read_desed(root, "weak")
    assert [i.tags for i in items] == [("Dog", "Speech"), ("Cat",)]
    with pytest.raises(DataError, match="soundscapes_16k is missing"):
        desed.read_desed(root, "synthetic_train")


def test_tau22_errors_name_the_row(tmp_path):
    root = tmp_path / "tau"
    _wav(root / "audio/park-a-1-0-a.wav")
    (root / "meta.csv").write_text("filename\tscene_label\tidentifier\tsource_label\n")
    (root / "evaluation_setup").mkdir()
    (root / "evaluation_setup/fold1_train.csv").write_text(
        "filename\tscene_label\naudio/park-a-1-0-a.wav\tpark\naudio/x.wav\tpark\n"
    )
    with pytest.raises(DataError, match=r"fold1_train\.csv:3: audio file .*x\.wav not found"):
        tau22.read_tau22(root, "train")
    (root / "evaluation_setup/fold1_train.csv").write_text("filename\tscene_label\naudio/park-a-1-0-a.wav\tbeach\n")
    with pytest.raises(DataError, match=r"fold1_train\.csv:2: unknown scene label 'beach'"):
        tau22.read_tau22(root, "train")
    with pytest.raises(DataError, match=r"fold1_evaluate\.csv: metadata file not found"):
        tau22.read_tau22(root, "test")


def test_load_audio_resamples_mixes_down_and_rejects_bad_files(tmp_path):
    rate = 44100
    t = np.arange(rate) / rate
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    sf.write(tmp_path / "s.wav", stereo, rate)
    mono = load_audio(tmp_path / "s.wav", 16000)
    assert mono.shape == (16000,) and mono.dtype == np.float32
    assert np.sqrt(np.mean(mono[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    with pytest.raises(DataError, match="empty.wav: empty audio file"):
        load_audio(tmp_path / "empty.wav", 16000)
    (tmp_path / "junk.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(DataError, match="junk.wav: unreadable audio"):
        load_audio(tmp_path / "junk.wav", 16000)


def test_fix_length_pad_modes():
    from keras_mtl.data.audio import fix_length

    x = np.arange(1, 4, dtype=np.float32)
    assert fix_length(x, 2).tolist() == [1, 2]
    assert fix_length(x, 5).tolist() == [1, 2, 3, 0, 0]
    assert fix_length(x, 8, "repeat").tolist() == [1, 2, 3, 1, 2, 3, 1, 2]


def test_clips_of_the_wrong_length_are_padded_or_cut_and_logged(tmp_path, caplog):
    import logging

    from keras_mtl.data.items import AudioItem
    from keras_mtl.data.pipeline import FeatureExtractor
    from keras_mtl.features.logmel import FrontEndConfig
    from keras_mtl.tasks.registry import parse_task_set

    task = parse_task_set("asc")[0]  # 1 s clips
    rng = np.random.default_rng(0)
    items = []
    for name, seconds in (("short", 0.5), ("exact", 1.0), ("long", 1.7)):
        sf.write(tmp_path / f"{name}.wav", 0.1 * rng.standard_normal(int(seconds * 16000)), 16000)
        items.append(AudioItem(tmp_path / f"{name}.wav", name, label=task.classes[0]))
    with caplog.at_level(logging.INFO, logger="keras_mtl.data.pipeline"):
        split = FeatureExtractor(FrontEndConfig(), tmp_path / "cache").prepare(task, "train", items, 4)
    assert {split.load_features(i).shape for i in range(3)} == {(101, 128)}
    assert "1 clips shorter than 1.00 s padded" in caplog.text
    assert "1 clips longer than 1.00 s: their first 1.00 s are used" in caplog.text
