"""Speech corpora in their published layouts (hand-built miniatures), and the espeak-ng synthetic set."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import soundfile as sf

from keras_mtl.core.errors import DataError
from keras_mtl.data.readers import common_voice, speech_commands, vad
from keras_mtl.data.synth import speech_synth, vad_mix


def _wav(path, seconds=1.0, rate=16000, freq=300.0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.2 * np.sin(2 * np.pi * freq * t), rate, format=fmt)


def test_speech_commands_miniature(tmp_path):
    root = tmp_path / "sc"
    for word in ("yes", "no", "zero"):
        for spk in ("aaaa1111", "bbbb2222", "cccc3333"):
            _wav(root / word / f"{spk}_nohash_0.wav")
    _wav(root / "_background_noise_" / "white_noise.wav", seconds=3)
    (root / "validation_list.txt").write_text("yes/bbbb2222_nohash_0.wav\nno/bbbb2222_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/cccc3333_nohash_0.wav\nzero/cccc3333_nohash_0.wav\n")
    train = speech_commands.read_speech_commands(root, "train")
    assert len(train) == 5 and {i.label for i in train} == {"yes", "no", "zero"}
    assert [i.key for i in speech_commands.read_speech_commands(root, "test")] == [
        "yes/cccc3333_nohash_0.wav",
        "zero/cccc3333_nohash_0.wav",
    ]
    assert speech_commands.background_noises(root)[0].name == "white_noise.wav"
    assert all(i.label != "_background_noise_" for i in train)
    (root / "testing_list.txt").write_text("yes/missing_nohash_0.wav\n")
    with pytest.raises(DataError, match="testing_list.txt: listed clip .*missing_nohash_0.wav not found"):
        speech_commands.read_speech_commands(root, "test")
    (root / "testing_list.txt").unlink()
    with pytest.raises(DataError, match="testing_list.txt is missing"):
        speech_commands.read_speech_commands(root, "train")


def test_common_voice_miniature_with_mp3(tmp_path, caplog):
    root = tmp_path / "cv"
    fmt = "MP3" if "MP3" in sf.available_formats() else "WAV"
    names = [f"common_voice_en_{k}.mp3" for k in range(5)]
    for k, name in enumerate(names):
        _wav(root / "clips" / name, seconds=1.5, freq=200 + 50 * k, fmt=fmt)
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n"
    rows = [
        ("a", names[0], "twenties", "male"),
        ("b", names[1], "fifties", "female_feminine"),
        ("c", names[2], "", "male_masculine"),
        ("d", names[3], "seventies", "other"),
        ("e", names[4], "teens", ""),
    ]
    (root / "train.tsv").write_text(
        header + "".join(f"{c}\t{p}\thello\t2\t0\t{a}\t{g}\t\ten\t\n" for c, p, a, g in rows)
    )
    caplog.set_level("INFO")
    gender = common_voice.read_common_voice(root, "train", "gender")
    assert [(i.key, i.label) for i in gender] == [(names[0], "male"), (names[1], "female"), (names[2], "male")]
    assert "dropped 2 row(s) without a usable gender label" in caplog.text
    age = common_voice.read_common_voice(root, "train", "age")
    assert [i.label for i in age] == ["under_30", "30_60", "over_60", "under_30"]
    from keras_mtl.data.audio import load_audio

    audio = load_audio(gender[0].path, 16000)  # mp3 decoded by soundfile
    assert abs(len(audio) - 24000) < 2000 and np.abs(audio).max() > 0.05
    with pytest.raises(DataError, match="dev.tsv: metadata file not found"):
        common_voice.read_common_voice(root, "validation", "gender")


def test_vad_builder_labels_match_the_audio(tmp_path):
    speech = []
    for k in range(6):
        path = tmp_path / "speech" / f"u{k}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        signal = np.zeros(16000)
        signal[4000:12000] = 0.5 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)  # 0.5 s of "speech"
        sf.write(path, signal, 16000)
        speech.append(path)
    noise = tmp_path / "noise.wav"
    sf.write(noise, 0.05 * np.random.default_rng(0).standard_normal(48000), 16000)
    root = vad_mix.build_vad_set(
        tmp_path / "vad",
        speech,
        [noise],
        vad_mix.VadBuildConfig(clip_seconds=3.0, train_clips=6, test_clips=3, snr_db=(10.0, 10.0)),
    )
    items = vad.read_vad(root, "train")
    assert len(items) == 6 and len(vad.read_vad(root, "test")) == 3
    for item in items:
        audio, rate = sf.read(item.path)
        for event in item.events:
            assert event.offset - event.onset == pytest.approx(0.5, abs=0.02)
            inside = audio[int(event.onset * rate) : int(event.offset * rate)]
            assert np.sqrt(np.mean(inside**2)) > 3 * 0.03  # speech is there, 10 dB over the noise


@pytest.mark.slow
def test_synthetic_speech_is_deterministic_and_in_layout(tmp_path):
    config = speech_synth.SpeechSynthConfig(speakers=10, cv_utterances=12, vad_train=4, vad_test=2)
    a = speech_synth.generate_speech(tmp_path / "a", config)
    b = speech_synth.generate_speech(tmp_path / "b", config)

    def digest(root):
        """Metadata and file names: espeak-ng itself reads the clock, so its samples vary slightly run to run."""
        h = hashlib.sha256()
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            h.update(path.relative_to(root).as_posix().encode())
            if (
                path.suffix in (".tsv", ".txt") and path.parts[len(root.parts)] != "vad"
            ):  # VAD spans come from the audio
                h.update(path.read_bytes())
        return h.hexdigest()

    assert digest(a) == digest(b)
    train = speech_commands.read_speech_commands(a / "speech_commands", "train")
    test = speech_commands.read_speech_commands(a / "speech_commands", "test")
    speakers_train = {i.key.split("/")[1].split("_")[0] for i in train}
    speakers_test = {i.key.split("/")[1].split("_")[0] for i in test}
    assert not speakers_train & speakers_test  # split by speaker, as in Speech Commands
    assert {i.label for i in train} == set(speech_commands.WORDS)
    clip, rate = sf.read(train[0].path)
    assert rate == 16000 and len(clip) == 16000
    genders = common_voice.read_common_voice(a / "common_voice", "train", "gender")
    assert {i.label for i in genders} <= set(common_voice.GENDERS)
    speakers = speech_synth.make_speakers(config, speech_synth.Espeak.get().variants())
    assert {s.gender for s in speakers} == {"female", "male"}
    assert {s.age_group for s in speakers} == set(common_voice.AGE_GROUPS)
    assert vad.read_vad(a / "vad", "train")


def test_unknown_label_column_and_wrong_layouts(tmp_path):
    root = tmp_path / "cv"
    _wav(root / "clips" / "a.mp3", fmt="MP3" if "MP3" in sf.available_formats() else "WAV")
    (root / "train.tsv").write_text("client_id\tpath\tsentence\tsex\nx\ta.mp3\thi\tmale\n")
    with pytest.raises(DataError, match=r"train\.tsv:1: missing column\(s\) gender"):
        common_voice.read_common_voice(root, "train", "gender")
    with pytest.raises(DataError, match="label column must be one of"):
        common_voice.read_common_voice(root, "train", "accent")
    with pytest.raises(DataError, match="clips/ is missing"):
        common_voice.read_common_voice(tmp_path, "train", "gender")
    with pytest.raises(DataError, match="audio/train is missing"):
        vad.read_vad(tmp_path, "train")
    with pytest.raises(DataError, match="Speech Commands folder not found"):
        speech_commands.read_speech_commands(tmp_path / "nowhere", "train")
