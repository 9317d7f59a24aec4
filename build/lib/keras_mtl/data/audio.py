"""Audio file I/O with soundfile and soxr (no tensorflow-io: its ops do not load on TF 2.21)."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import soxr

from keras_mtl.core.errors import DataError
from keras_mtl.core.fileio import atomic_path


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Read ``path`` as float32 mono at ``sample_rate`` (channels averaged, soxr resampling).

    Raises DataError naming the file when it is missing, unreadable, empty or not finite.
    """
    try:
        data, file_rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise DataError(f"{path}: audio file not found") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: unreadable audio ({_reason(exc)})") from None
    if data.shape[0] == 0:
        raise DataError(f"{path}: empty audio file (0 samples)")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(mono)):
        raise DataError(f"{path}: audio contains NaN or infinite samples")
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


PAD_MODES = ("zeros", "repeat")


def audio_seconds(path: str | os.PathLike) -> float:
    """The length of an audio file in seconds, from its header; DataError if unreadable or empty."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise DataError(
            f"{path}: unreadable audio ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc})"
        ) from None
    if info.frames == 0:
        raise DataError(f"{path}: empty audio file (0 samples)")
    return info.frames / info.samplerate


def fix_length(signal: np.ndarray, n_samples: int, pad: str = "zeros") -> np.ndarray:
    """Crop the end, or pad at the end, so the signal has exactly ``n_samples`` samples.

    ``pad="zeros"`` appends silence (frame tasks: labels stay aligned); ``pad="repeat"`` tiles
    the clip (clip tasks: no digital silence, whose log-mel sits at the floor and would skew
    the shared normalisation statistics).
    """
    if len(signal) >= n_samples:
        return signal[:n_samples]
    if pad == "repeat" and len(signal):
        return np.tile(signal, -(-n_samples // len(signal)))[:n_samples]
    if pad not in PAD_MODES:
        raise ValueError(f"unknown pad mode {pad!r}")
    return np.pad(signal, (0, n_samples - len(signal)))


def write_wav(path: str | os.PathLike, signal: np.ndarray, sample_rate: int) -> None:
    """Write 16-bit PCM atomically (temporary file, then rename)."""
    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(os.fspath(tmp), np.clip(signal, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
