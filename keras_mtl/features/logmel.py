"""Log-mel front end (tf.signal): one FrontEndConfig for training, evaluation and the firmware headers."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import scipy.signal

from keras_mtl.core.backend import tf


@dataclasses.dataclass(frozen=True)
class FrontEndConfig:
    """One front-end configuration, used for training, evaluation and firmware headers.

    Defaults follow the seed papers: 16 kHz, 128 ms Hann window, 10 ms hop, 128 mel bands,
    power spectrum, natural log with a floor. Frames are centred (the signal is zero-padded
    by half a window on both sides), so frame ``i`` is centred at ``i * hop`` samples.

    ``level_seconds`` > 0 turns on running level normalisation (see ``normalize_level``): every
    frame minus a running mean of the frames' mean log-mel, with that time constant, so that a
    recording's gain (a constant in the log domain) does not reach the network; 0 (the default)
    leaves the log-mel as it is.
    """

    sample_rate: int = 16000
    window_length: int = 2048
    hop_length: int = 160
    fft_length: int = 2048
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None
    log_floor: float = 1e-6
    center: bool = True
    level_seconds: float = 0.0

    def __post_init__(self):
        if self.window_length > self.fft_length:
            raise ValueError("window_length must not exceed fft_length")
        if self.hop_length <= 0 or self.n_mels <= 0 or self.sample_rate <= 0:
            raise ValueError("sample_rate, hop_length and n_mels must be positive")
        if not self.level_seconds >= 0:
            raise ValueError("level_seconds must be 0 (off) or a positive time constant in seconds")

    @property
    def level_frames(self) -> int:
        """The running level's time constant in frames (0: no level normalisation)."""
        if not self.level_seconds:
            return 0
        return max(1, int(round(self.level_seconds / self.frame_seconds)))

    @property
    def upper_edge_hz(self) -> float:
        return float(self.f_max if self.f_max is not None else self.sample_rate / 2)

    @property
    def frame_seconds(self) -> float:
        return self.hop_length / self.sample_rate

    def n_frames(self, n_samples: int) -> int:
        """Number of feature frames for a signal of ``n_samples`` samples."""
        if self.center:
            return 1 + n_samples // self.hop_length
        return max(0, 1 + (n_samples - self.window_length) // self.hop_length)

    def fingerprint(self) -> str:
        """Short stable hash of the configuration (the feature-cache key)."""
        fields = dataclasses.asdict(self)
        if not self.level_seconds:  # a later field: caches made before it keep their key
            del fields["level_seconds"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


def running_level(levels: np.ndarray, frames: int) -> np.ndarray:
    """Running mean along the last axis of ``levels`` (..., T): m_t = m_{t-1} + a_t (l_t - m_{t-1}) with
    a_t = max(1 / (t + 1), 1 / frames), so m_t is the mean of the frames so far until ``frames``
    frames have passed, then an exponential moving average with time constant ``frames`` frames
    (microcontroller/frontend/logmel.c, km_level_update, runs the same recursion in float)."""
    levels = np.asarray(levels, np.float64)
    count = levels.shape[-1]
    warm = min(count, frames)
    out = np.empty_like(levels)
    out[..., :warm] = np.cumsum(levels[..., :warm], axis=-1) / np.arange(1, warm + 1)
    if count > warm:
        alpha = 1.0 / frames
        start = out[..., warm - 1 : warm] * (1.0 - alpha)
        out[..., warm:], _ = scipy.signal.lfilter([alpha], [1.0, alpha - 1.0], levels[..., warm:], axis=-1, zi=start)
    return out


def normalize_level(values: np.ndarray, frames: int) -> np.ndarray:
    """Log-mel (..., T, n_mels) minus its running level: the mean over the mel bands of each frame,
    averaged by ``running_level`` over the frames from the first one (each clip or window starts
    afresh, as the firmware's stream does). A gain g multiplies the power by g^2, adding 2 ln g to
    every value: the result does not change (as long as no band is at the log floor). Float32."""
    values = np.asarray(values, np.float32)
    level = running_level(values.mean(axis=-1, dtype=np.float64), frames)
    return (values - level[..., None]).astype(np.float32)


def mel_weight_matrix(config: FrontEndConfig) -> np.ndarray:
    """The (fft_length // 2 + 1, n_mels) HTK-mel triangular filterbank used by the front end."""
    matrix = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=config.n_mels,
        num_spectrogram_bins=config.fft_length // 2 + 1,
        sample_rate=config.sample_rate,
        lower_edge_hertz=config.f_min,
        upper_edge_hertz=config.upper_edge_hz,
        dtype=tf.float64,
    )
    return matrix.numpy()


class LogMel:
    """Waveform (samples,) or (batch, samples) at ``config.sample_rate`` -> log-mel (..., frames, n_mels)."""

    def __init__(self, config: FrontEndConfig, float16_values: bool = False):
        # float16_values: values rounded to float16 (as the feature cache stores them), returned as float32
        self.config = config
        self.float16_values = float16_values
        self.level_frames = config.level_frames
        self._mel = tf.constant(mel_weight_matrix(config), dtype=tf.float32)
        self._fn = tf.function(self._compute, reduce_retracing=True)
        self._frames_fn = tf.function(lambda segments: self._compute(segments, pad=False), reduce_retracing=True)

    def _compute(self, waveform, pad: bool = True):
        cfg = self.config
        waveform = tf.convert_to_tensor(waveform, tf.float32)
        if cfg.center and pad:
            pad = cfg.fft_length // 2
            paddings = [[0, 0]] * (len(waveform.shape) - 1) + [[pad, pad]]
            waveform = tf.pad(waveform, paddings)
        stft = tf.signal.stft(
            waveform,
            frame_length=cfg.window_length,
            frame_step=cfg.hop_length,
            fft_length=cfg.fft_length,
            window_fn=tf.signal.hann_window,
            pad_end=False,
        )
        power = tf.math.real(stft) ** 2 + tf.math.imag(stft) ** 2
        mel = tf.tensordot(power, self._mel, axes=1)
        values = tf.math.log(tf.maximum(mel, cfg.log_floor))
        if self.float16_values and not self.level_frames:  # else rounded after the level (finish)
            values = tf.cast(tf.cast(values, tf.float16), tf.float32)
        return values

    def __call__(self, waveform) -> np.ndarray:
        return self.finish(self.raw(waveform))

    def raw(self, waveform) -> np.ndarray:
        """The log-mel before the level normalisation (rounded to float16 here only when there is none)."""
        return self._fn(np.asarray(waveform, dtype=np.float32)).numpy()

    def finish(self, values: np.ndarray) -> np.ndarray:
        """``raw`` values of whole clips or windows (..., T, n_mels) -> the features: level-normalised
        (when the config says so) and rounded to float16 (when asked for); else unchanged."""
        if not self.level_frames:
            return values
        values = normalize_level(values, self.level_frames)
        return values.astype(np.float16).astype(np.float32) if self.float16_values else values

    @property
    def left_padding(self) -> int:
        """Samples of zeros before a signal's first frame (half the FFT length when centred, else 0):
        frame ``i`` covers samples ``[i * hop - left_padding, i * hop - left_padding + window_length)``."""
        return self.config.fft_length // 2 if self.config.center else 0

    def frames(self, segments) -> np.ndarray:
        """(n, window_length) segments, each one frame's samples (padding included) -> (n, n_mels): the
        same operations as ``raw``, so a frame equals the one ``raw`` computes over the signal it was
        cut from (used to recompute only the frames a window's edges change)."""
        return self._frames_fn(np.asarray(segments, dtype=np.float32)).numpy()[:, 0]
