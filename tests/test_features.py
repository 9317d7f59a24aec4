"""Front end: log-mel against an independent numpy reference, masking, feature cache."""

from __future__ import annotations

import numpy as np
import pytest

from keras_mtl.core.backend import tf
from keras_mtl.features.augment import AugmentConfig, spec_augment
from keras_mtl.features.cache import FeatureCache
from keras_mtl.features.logmel import FrontEndConfig, LogMel


def reference_log_mel(signal: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """Plain numpy: centred frames, periodic Hann, |rfft|^2, HTK-mel triangles (in mel space), log."""
    pad = cfg.fft_length // 2
    x = np.pad(signal.astype(np.float64), (pad, pad))
    n_frames = 1 + (len(x) - cfg.window_length) // cfg.hop_length
    n = np.arange(cfg.window_length)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / cfg.window_length)
    frames = np.stack(
        [x[i * cfg.hop_length : i * cfg.hop_length + cfg.window_length] * window for i in range(n_frames)]
    )
    power = np.abs(np.fft.rfft(frames, n=cfg.fft_length, axis=1)) ** 2

    def hz_to_mel(f):
        return 1127.0 * np.log1p(np.asarray(f) / 700.0)

    n_bins = cfg.fft_length // 2 + 1
    bin_hz = np.linspace(0.0, cfg.sample_rate / 2, n_bins)
    bin_mel = hz_to_mel(bin_hz)
    edges = np.linspace(hz_to_mel(cfg.f_min), hz_to_mel(cfg.upper_edge_hz), cfg.n_mels + 2)
    fb = np.zeros((n_bins, cfg.n_mels))
    for m in range(cfg.n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        rising = (bin_mel - left) / (centre - left)
        falling = (right - bin_mel) / (right - centre)
        fb[:, m] = np.maximum(0.0, np.minimum(rising, falling))
    fb[0, :] = 0.0  # the DC bin carries no mel weight
    return np.log(np.maximum(power @ fb, cfg.log_floor))


@pytest.mark.parametrize("seconds", [1.0, 2.37])
def test_log_mel_matches_numpy_reference(seconds):
    cfg = FrontEndConfig()
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * cfg.sample_rate)) / cfg.sample_rate
    signal = 0.1 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3100 * t)
    ours = LogMel(cfg)(signal.astype(np.float32))
    ref = reference_log_mel(signal, cfg)
    assert ours.shape == ref.shape == (cfg.n_frames(len(t)), 128)
    assert np.max(np.abs(ours - ref)) <= 1e-3


def test_front_end_defaults_follow_the_papers():
    cfg = FrontEndConfig()
    assert cfg.sample_rate == 16000
    assert cfg.window_length / cfg.sample_rate == pytest.approx(0.128)
    assert cfg.hop_length / cfg.sample_rate == pytest.approx(0.010)
    assert cfg.n_mels == 128
    assert cfg.n_frames(16000) == 101 and cfg.n_frames(160000) == 1001


def test_spec_augment_masks_at_most_the_configured_share():
    tf.random.set_seed(1)
    features = tf.random.normal((101, 128)) + 5.0
    cfg = AugmentConfig(time_mask_ratio=0.15, freq_mask_ratio=0.15)
    masked_any = False
    for _ in range(20):
        out = spec_augment(features, cfg).numpy()
        changed = out != features.numpy()
        rows = np.flatnonzero(changed.all(axis=1))
        cols = np.flatnonzero(changed.all(axis=0))
        assert len(rows) <= int(0.15 * 101) and len(cols) <= int(0.15 * 128)
        # everything changed lies in a masked row or column
        mask = np.zeros_like(changed)
        mask[rows, :] = True
        mask[:, cols] = True
        assert not (changed & ~mask).any()
        masked_any |= changed.any()
    assert masked_any


def test_feature_cache_round_trip_and_invalidation(tmp_path):
    import soundfile as sf

    cfg = FrontEndConfig()
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    cache = FeatureCache(tmp_path / "cache", cfg)
    assert cache.load(wav, 16000) is None
    feats = np.random.default_rng(0).standard_normal((101, 128)).astype(np.float32)
    cache.store(wav, 16000, feats)
    back = cache.load(wav, 16000)
    assert back.dtype == np.float16 and np.allclose(back, feats, atol=1e-2)
    assert not list(cache.root.rglob("*.tmp*"))
    other = FeatureCache(tmp_path / "cache", FrontEndConfig(n_mels=64))
    assert other.root != cache.root and other.load(wav, 16000) is None
    sf.write(wav, np.ones(16000, np.float32) * 0.1, 16000)  # edited file -> new key
    import os

    os.utime(wav, ns=(1, 1))
    assert cache.load(wav, 16000) is None


def test_running_level_follows_its_recursion_and_removes_a_gain():
    """running_level equals the recursion the C front end runs (mean so far, then an exponential
    average); normalize_level removes a constant offset (a gain in the log domain) exactly."""
    from keras_mtl.features.logmel import normalize_level, running_level

    rng = np.random.default_rng(0)
    levels = rng.standard_normal((2, 300)) * 3
    level = running_level(levels, 40)
    for row, out in zip(levels, level):
        m = 0.0
        for t, value in enumerate(row):
            m += max(1.0 / (t + 1), 1.0 / 40) * (value - m)
            assert out[t] == pytest.approx(m, abs=1e-9)
    values = rng.standard_normal((300, 16)).astype(np.float32)
    assert np.abs(normalize_level(values + 7.5, 40) - normalize_level(values, 40)).max() < 1e-5
    assert np.allclose(normalize_level(values, 1), values - values.mean(axis=1, keepdims=True), atol=1e-6)


def test_level_normalisation_is_off_by_default_and_keeps_old_cache_keys():
    assert FrontEndConfig().level_frames == 0
    assert FrontEndConfig().fingerprint() == FrontEndConfig(level_seconds=0).fingerprint()
    assert FrontEndConfig(level_seconds=5).fingerprint() != FrontEndConfig().fingerprint()
    assert FrontEndConfig(level_seconds=5).level_frames == 500
    with pytest.raises(ValueError, match="level_seconds"):
        FrontEndConfig(level_seconds=-1)
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    assert np.array_equal(LogMel(FrontEndConfig())(audio), LogMel(FrontEndConfig()).raw(audio))


def test_filter_augment_adds_a_piecewise_linear_gain_within_its_range():
    """FilterAugment (DESED baseline, linear type): one gain curve over the mel bands, the same for
    every frame, within ±db dB, linear inside each of 3-5 bands; off unless filter_db > 0."""
    from keras_mtl.features.augment import filter_augment

    rng = np.random.default_rng(2)
    features = rng.standard_normal((20, 64)).astype(np.float32)
    for seed in range(8):
        tf.random.set_seed(seed)
        offset = (filter_augment(features, 6.0, (3, 5), 6).numpy() - features) * 20 / np.log(10)  # dB
        assert np.allclose(offset, offset[:1], atol=1e-4) and np.abs(offset).max() <= 6.0 + 1e-4
        kinks = np.abs(np.diff(offset[0], 2)) > 1e-3  # a change of slope: at a band boundary only
        assert 1 <= kinks.sum() <= 2 * 4
    positions = []  # the band boundaries spread over the whole mel axis (not bunched at its low end)
    for seed in range(40):
        tf.random.set_seed(100 + seed)
        offset = (filter_augment(np.zeros((1, 64), np.float32), 6.0, (3, 5), 6).numpy()[0]) * 20 / np.log(10)
        positions += list(np.flatnonzero(np.abs(np.diff(offset, 2)) > 1e-3))
    assert 24 <= np.mean(positions) <= 40
    masked = spec_augment(features, AugmentConfig(time_mask_ratio=0, freq_mask_ratio=0))
    assert np.array_equal(masked.numpy(), features)
    with pytest.raises(ValueError, match="filter_db"):
        AugmentConfig(filter_db=-1)
