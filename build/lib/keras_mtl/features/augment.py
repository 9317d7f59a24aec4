"""SpecAugment-style masking of log-mel training batches (time and mel bands, filled with the clip mean)."""

from __future__ import annotations

import dataclasses

from keras_mtl.core.backend import tf


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """SpecAugment-style masking, applied to training batches only.

    Each example gets ``n_time_masks`` masks of up to ``time_mask_ratio`` of its frames and
    ``n_freq_masks`` masks of up to ``freq_mask_ratio`` of its mel bands, filled with the
    example's mean value.
    """

    time_mask_ratio: float = 0.15
    freq_mask_ratio: float = 0.15
    n_time_masks: int = 1
    n_freq_masks: int = 1


def spec_augment(features, config: AugmentConfig, seed=None):
    """Mask one example ``(frames, n_mels)``; a tf function usable inside ``tf.data.map``."""
    features = tf.convert_to_tensor(features)
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
