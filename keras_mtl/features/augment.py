"""Augmentation of log-mel training examples: SpecAugment-style masking (time and mel bands, filled
with the clip mean) and FilterAugment (random gains over a few bands, Nam et al., ICASSP 2022)."""

from __future__ import annotations

import dataclasses
import math

from keras_mtl.core.backend import tf


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """SpecAugment-style masking, applied to training batches only.

    Each example gets ``n_time_masks`` masks of up to ``time_mask_ratio`` of its frames and
    ``n_freq_masks`` masks of up to ``freq_mask_ratio`` of its mel bands, filled with the
    example's mean value.

    ``filter_db`` > 0 adds FilterAugment first (``filter_augment``): a random filter of
    ``filter_bands`` (low, high: inclusive) bands, each at least ``filter_min_bands`` mel bands wide,
    with gains drawn from ±``filter_db`` dB and interpolated linearly across each band; 0 (the
    default) leaves it out.
    """

    time_mask_ratio: float = 0.15
    freq_mask_ratio: float = 0.15
    n_time_masks: int = 1
    n_freq_masks: int = 1
    filter_db: float = 0.0
    filter_bands: tuple[int, int] = (3, 5)
    filter_min_bands: int = 6

    def __post_init__(self):
        low, high = self.filter_bands
        if not (self.filter_db >= 0 and 1 <= low <= high and self.filter_min_bands >= 1):
            raise ValueError("augment: filter_db must be >= 0, filter_bands (low, high) with 1 <= low <= high, "
                             "filter_min_bands >= 1")  # fmt: skip


def filter_augment(features, db: float, bands: tuple[int, int] = (3, 5), min_bands: int = 6, seed=None):
    """FilterAugment (Nam, Kim & Park, "FilterAugment", ICASSP 2022; the DESED baseline's ``filt_aug``,
    linear type, 3-5 bands as its ``n_band=[3, 6]`` draws) on one log-mel example ``(frames, n_mels)`` (natural log of power): the mel axis cut
    into n ~ U{bands} bands at random boundaries (each band at least ``min_bands`` wide, fewer when the
    axis is too short), gains drawn uniformly from [-db, db] dB at every boundary and interpolated
    linearly in between, added as ``gain_dB / 20 * ln 10`` (the baseline multiplies the mel power by
    10^(dB/20)). A tf function usable inside ``tf.data.map``; same shape and dtype."""
    features = tf.convert_to_tensor(features)
    n_mels = tf.shape(features)[1]
    count = tf.random.uniform([], bands[0], bands[1] + 1, dtype=tf.int32, seed=seed)
    width = tf.maximum(tf.minimum(min_bands, n_mels // count), 1)
    slack = tf.maximum(n_mels - count * width, 0)
    inner = tf.sort(tf.random.uniform([bands[1] - 1], 0, slack + 1, dtype=tf.int32, seed=seed)[: count - 1])
    inner = inner + tf.range(1, count) * width  # count - 1 boundaries, >= width apart
    edges = tf.concat([[0], inner, [n_mels]], axis=0)  # count + 1 boundaries, 0 ... n_mels
    gains = tf.random.uniform([bands[1] + 1], -db, db, seed=seed)[: count + 1]
    position = tf.range(n_mels)
    band = tf.searchsorted(edges[1:], position, side="right")  # each mel band's filter band
    band = tf.minimum(band, count - 1)
    start = tf.gather(edges, band)
    stop = tf.gather(edges, band + 1)
    # linspace(gain[i], gain[i + 1], stop - start) over each band, as the baseline computes it
    fraction = tf.cast(position - start, tf.float32) / tf.cast(tf.maximum(stop - start - 1, 1), tf.float32)
    curve = tf.gather(gains, band) + fraction * (tf.gather(gains, band + 1) - tf.gather(gains, band))
    offset = curve * (math.log(10.0) / 20.0)
    return features + tf.cast(offset[None, :], features.dtype)


def spec_augment(features, config: AugmentConfig, seed=None):
    """FilterAugment (when ``config.filter_db`` > 0), then mask one example ``(frames, n_mels)``; a tf
    function usable inside ``tf.data.map``."""
    features = tf.convert_to_tensor(features)
    if config.filter_db > 0:
        features = filter_augment(features, config.filter_db, tuple(config.filter_bands), config.filter_min_bands, seed)
    n_frames = tf.shape(features)[0]
    n_mels = tf.shape(features)[1]
    fill = tf.reduce_mean(features)
    keep = tf.ones_like(features, dtype=tf.bool)

    def band_mask(length, ratio, count, axis):
        mask = tf.zeros([length], dtype=tf.bool)
        max_width = tf.cast(tf.math.floor(tf.cast(length, tf.float32) * ratio), tf.int32)
        positions = tf.range(length)
        for _ in range(count):
            width = tf.random.uniform([], 0, max_width + 1, dtype=tf.int32, seed=seed)
            start = tf.random.uniform([], 0, tf.maximum(length - width, 0) + 1, dtype=tf.int32, seed=seed)
            mask = mask | ((positions >= start) & (positions < start + width))
        return tf.expand_dims(mask, 1 - axis)

    if config.n_time_masks and config.time_mask_ratio > 0:
        keep = keep & ~band_mask(n_frames, config.time_mask_ratio, config.n_time_masks, 0)
    if config.n_freq_masks and config.freq_mask_ratio > 0:
        keep = keep & ~band_mask(n_mels, config.freq_mask_ratio, config.n_freq_masks, 1)
    return tf.where(keep, features, tf.cast(fill, features.dtype))
