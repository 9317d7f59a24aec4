"""Synthetic data: deterministic from the seed, and the corpus readers read exactly what it writes."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import soundfile as sf

from keras_mtl.data.readers import desed, tau22
from keras_mtl.data.synth import synthetic
from keras_mtl.data.synth.synthetic import SyntheticConfig, generate
from tests.conftest import TINY


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic(tmp_path, tiny_config):
    a = generate(tmp_path / "a", tiny_config, workers=1)
    b = generate(tmp_path / "b", tiny_config, workers=2)
    assert _digest(a) == _digest(b)
    other = generate(
        tmp_path / "c", SyntheticConfig(**{**tiny_config.__dict__, "seed": tiny_config.seed + 1}), workers=1
    )
    assert _digest(other) != _digest(a)


def test_rerun_after_interruption_renders_only_missing_files(tmp_path, tiny_config):
    root = generate(tmp_path / "r", tiny_config, workers=1)
    before = _digest(root)
    victim = next((root / "tau22" / "audio").glob("*.wav"))
    victim.unlink()
    (root / "complete.json").unlink()
    generate(root, tiny_config, workers=1)
    assert _digest(root) == before


def test_tau22_reader_reads_what_was_written(tiny_corpus, tiny_config):
    plans = synthetic.plan_all(tiny_config)
    train = tau22.read_tau22(tiny_corpus / "tau22", "train")
    test = tau22.read_tau22(tiny_corpus / "tau22", "test")
    assert len(train) == 10 * tiny_config.asc_train_per_scene
    assert len(test) == 10 * tiny_config.asc_test_per_scene
    assert [(i.key, i.label) for i in train] == [(p["file"], p["scene"]) for p in plans["asc_train"]]
    assert {i.label for i in train} == set(tau22.SCENES)
    train_locations = {i.key.split("-")[1:3][1] for i in train}
    test_locations = {i.key.split("-")[1:3][1] for i in test}
    assert not train_locations & test_locations
    data, rate = sf.read(train[0].path)  # TAU22's rate (corpora: distinct, the default)
    assert rate == 44100 and len(data) == 44100 and np.abs(data).max() > 0.01


def _level_db(path) -> float:
    audio, _ = sf.read(path)
    return float(20 * np.log10(np.sqrt(np.mean(audio**2)) + 1e-12))


def _share_above(path, hz: float) -> float:
    audio, rate = sf.read(path)
    power = np.abs(np.fft.rfft(audio)) ** 2
    return float(power[np.fft.rfftfreq(len(audio), 1 / rate) > hz].sum() / power.sum())


def test_each_corpus_is_recorded_its_own_way(tiny_corpus):
    # corpora: distinct (issue 28): ASC loud at 44.1 kHz; DESED's recorded clips (validation, weak,
    # unlabelled) about 20 dB quieter and band-limited; its synthetic soundscapes clean at 16 kHz
    asc = [i.path for i in tau22.read_tau22(tiny_corpus / "tau22", "train")]
    recorded = [i.path for split in ("validation", "weak") for i in desed.read_desed(tiny_corpus / "desed", split)]
    clean = [i.path for i in desed.read_desed(tiny_corpus / "desed", "synthetic_train")]
    assert {sf.info(p).samplerate for p in asc} == {44100}
    assert {sf.info(p).samplerate for p in recorded + clean} == {16000}
    gap = np.median([_level_db(p) for p in asc]) - np.median([_level_db(p) for p in recorded])
    assert 14 < gap < 30
    assert (
        max(_share_above(p, 6500) for p in recorded) < 1e-4 < 1e-3 < np.median([_share_above(p, 6500) for p in clean])
    )


def test_alike_corpora_keep_the_sets_and_folders_of_before(tmp_path):
    from keras_mtl.core.errors import ConfigError

    alike = synthetic.SyntheticConfig(corpora="alike")
    assert alike.fingerprint() == "9bfe6310"  # the default set's folder before corpora existed
    assert synthetic.SyntheticConfig().fingerprint() != alike.fingerprint()
    small = dataclasses.replace(TINY, corpora="alike", asc_train_per_scene=1, asc_test_per_scene=0)
    plans = synthetic.plan_all(small)
    assert all(p.get("chain") is None for p in plans["asc_train"])
    synthetic.generate(tmp_path, small, workers=1)
    data, rate = sf.read(tmp_path / "tau22" / plans["asc_train"][0]["file"])
    expected = synthetic.render(plans["asc_train"][0], 16000)
    assert rate == 16000 and np.abs(data - expected).max() <= 1 / 32768 + 1e-7  # the generator's audio as it was
    with pytest.raises(ConfigError, match="corpora must be one of"):
        synthetic.SyntheticConfig(corpora="mixed")


def test_desed_reader_reads_what_was_written(tiny_corpus, tiny_config):
    plans = synthetic.plan_all(tiny_config)["sed"]
    root = tiny_corpus / "desed"
    strong = desed.read_desed(root, "synthetic_train")
    planned = {p["file"]: p["events"] for p in plans["synthetic_train"]}
    assert len(strong) == tiny_config.sed_train
    for item in strong:
        expected = sorted((round(e["onset"], 3), round(e["offset"], 3), e["label"]) for e in planned[item.key])
        got = sorted((e.onset, e.offset, e.label) for e in item.events)
        assert got == expected
        assert all(0 <= e.onset < e.offset <= 10.0 for e in item.events)
    validation = desed.read_desed(root, "validation")
    assert len(validation) == tiny_config.sed_validation
    assert all(item.duration == 10.0 for item in validation)
    weak = desed.read_desed(root, "weak")
    assert [item.tags for item in weak] == [tuple(sorted({e["label"] for e in p["events"]})) for p in plans["weak"]]
    assert len(desed.read_desed(root, "unlabeled")) == tiny_config.sed_unlabeled


def test_events_are_audible_where_annotated(tiny_corpus):
    """Energy inside annotated event spans exceeds the background-only parts of the clip."""
    louder = 0
    items = desed.read_desed(tiny_corpus / "desed", "synthetic_train")
    for item in items:
        audio, rate = sf.read(item.path)
        active = np.zeros(len(audio), bool)
        for e in item.events:
            active[int(e.onset * rate) : int(e.offset * rate)] = True
        if active.all() or not active.any():
            continue
        louder += np.mean(audio[active] ** 2) > np.mean(audio[~active] ** 2)
    assert louder >= len(items) // 2
