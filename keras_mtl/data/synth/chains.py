"""How each built-in corpus was "recorded": its level, band and sample rate.

Real multi-task data never comes from one recorder: TAU Urban Acoustic Scenes 2022 (ASC) was recorded
at 44.1 kHz with several devices at high levels; DESED's synthetic soundscapes (SED strong labels) are
clean 16 kHz mixtures while its weak, unlabelled and validation clips are real YouTube recordings,
quieter and band-limited by their devices and codecs; Speech Commands are close-talk 16 kHz words;
Common Voice sentences come from every kind of microphone, often narrow-band. With
``corpora: distinct`` (the default of SyntheticConfig and SpeechSynthConfig) the built-in sets get
such differences, so that a joint model meets the cross-corpus problem (normalisation statistics
that differ by corpus) that the synthetic sets once hid; ``corpora: alike`` writes every corpus as
one generator at one level (the sets of keras-mtl 0.1).

A chain is applied to a rendered clip: a gain drawn per clip from the corpus's range, an optional
band limit (4th-order Butterworth band-pass, scipy), then the corpus's sample rate (soxr).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import soxr
from scipy.signal import butter, sosfilt

from keras_mtl.core.errors import ConfigError

CORPORA_MODES = ("distinct", "alike")


@dataclasses.dataclass(frozen=True)
class RecordingChain:
    """``gain_db``: (low, high) dB added to a clip, drawn uniformly per clip; ``band_hz``: (low, high)
    band-pass edges in Hz or None; ``sample_rate``: the rate the corpus's files are written at (Hz)."""

    name: str
    gain_db: tuple[float, float]
    band_hz: tuple[float, float] | None
    sample_rate: int

    def apply(self, audio: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        """(samples,) float audio at ``sample_rate`` -> the clip as this corpus holds it, at
        ``self.sample_rate`` (peaks above 0.99 scaled down, as a recorder's gain would be set)."""
        out = np.asarray(audio, np.float64)
        if self.band_hz is not None:
            high = min(self.band_hz[1], 0.45 * sample_rate)
            out = sosfilt(butter(4, [self.band_hz[0], high], btype="bandpass", fs=sample_rate, output="sos"), out)
        out = out * 10 ** (rng.uniform(*self.gain_db) / 20)
        if self.sample_rate != sample_rate:
            out = soxr.resample(out, sample_rate, self.sample_rate, quality="HQ")
        peak = float(np.max(np.abs(out))) if len(out) else 0.0
        if peak > 0.99:
            out = out * (0.99 / peak)
        return out.astype(np.float32)


#: the built-in corpora's chains (gains relative to the generator's levels: background RMS -38..-28 dBFS
#: for sound scenes, speech RMS -26 dBFS); the SED test clips ("recorded") sit about 20 dB below the
#: ASC clips and lose what is below 120 Hz and above 5 kHz
CHAINS = {
    "tau22": RecordingChain("tau22", (8.0, 12.0), None, 44100),
    "desed_synthetic": RecordingChain("desed_synthetic", (-4.0, 0.0), None, 16000),
    "desed_recorded": RecordingChain("desed_recorded", (-20.0, -14.0), (120.0, 5000.0), 16000),
    "speech_commands": RecordingChain("speech_commands", (4.0, 8.0), None, 16000),
    "common_voice": RecordingChain("common_voice", (-10.0, -4.0), (300.0, 3400.0), 8000),
}


def check_mode(corpora: str) -> str:
    """``corpora`` if it is a known mode; ConfigError otherwise."""
    if corpora not in CORPORA_MODES:
        raise ConfigError(f"corpora must be one of {', '.join(CORPORA_MODES)}, not {corpora!r}")
    return corpora


def chain_rng(seed: list[int]) -> np.random.Generator:
    """The random stream of a clip's chain (apart from its content's stream: ``alike`` sets keep their audio)."""
    return np.random.default_rng([*seed, 5])
