"""Procedural sound sources (numpy only): scene backgrounds and the ten DESED event classes.

Every function takes a ``numpy.random.Generator`` and returns float32 audio; nothing is
downloaded. The sounds are parametric caricatures with the spectral and temporal cues of the
real classes (tonal alarms, harmonic voices, broadband motors, water-like noise, ...), chosen so
that some classes are confusable (motors with motors, voices with voices, noises with noises).
"""

from __future__ import annotations

import numpy as np

BAND_CENTERS_HZ = np.array([62.5, 125, 250, 500, 1000, 2000, 4000, 7500])


def fade(signal: np.ndarray, sr: int, seconds: float = 0.01) -> np.ndarray:
    n = min(len(signal) // 2, max(1, int(seconds * sr)))
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    signal = signal.copy()
    signal[:n] *= ramp
    signal[-n:] *= ramp[::-1]
    return signal


def shaped_noise(rng, n: int, sr: int, gains_db: np.ndarray, centers_hz=BAND_CENTERS_HZ) -> np.ndarray:
    """White noise shaped by a smooth spectral envelope given in dB at ``centers_hz``."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    log_f = np.log2(np.maximum(freqs, 20.0))
    gains = np.interp(log_f, np.log2(centers_hz), gains_db)
    out = np.fft.irfft(spectrum * 10 ** (gains / 20.0), n)
    return (out / (np.std(out) + 1e-9)).astype(np.float32)


def band_noise(rng, n: int, sr: int, low: float, high: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spectrum[(freqs < low) | (freqs > high)] = 0
    out = np.fft.irfft(spectrum, n)
    return (out / (np.std(out) + 1e-9)).astype(np.float32)


def smooth_random(rng, n: int, sr: int, rate_hz: float) -> np.ndarray:
    """A random curve with variations at about ``rate_hz``, zero mean, unit std."""
    points = max(2, int(n / sr * rate_hz) + 2)
    curve = np.interp(np.arange(n), np.linspace(0, n, points), rng.standard_normal(points))
    return ((curve - curve.mean()) / (curve.std() + 1e-9)).astype(np.float32)


def harmonic(rng, f0: np.ndarray, sr: int, n_harmonics: int, rolloff: float, formants=None, odd_only=False):
    """Sum of harmonics of the per-sample pitch track ``f0`` (Hz)."""
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros(len(f0), dtype=np.float64)
    mean_f0 = float(np.mean(f0))
    for k in range(1, n_harmonics + 1):
        if odd_only and k % 2 == 0:
            continue
        if k * mean_f0 >= sr / 2 - 200:
            break
        amp = k ** (-rolloff)
        if formants is not None:
            amp *= sum(np.exp(-0.5 * ((k * mean_f0 - fc) / bw) ** 2) for fc, bw in formants) + 0.05
        out += amp * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return (out / (np.std(out) + 1e-9)).astype(np.float32)


def damped_partials(rng, n: int, sr: int, freqs, decay_s: float) -> np.ndarray:
    t = np.arange(n) / sr
    out = sum(
        np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) * np.exp(-t / decay_s) / (i + 1) for i, f in enumerate(freqs)
    )
    return np.asarray(out, dtype=np.float32)


def place(target: np.ndarray, source: np.ndarray, start: int) -> None:
    end = min(len(target), start + len(source))
    if end > start:
        target[start:end] += source[: end - start]


# --------------------------------------------------------------------------------- events
def alarm(rng, n, sr):
    t = np.arange(n) / sr
    if rng.random() < 0.5:  # electronic beeps
        f0 = rng.uniform(700, 2600)
        period, duty = rng.uniform(0.15, 0.6), rng.uniform(0.4, 0.75)
        gate = ((t % period) < period * duty).astype(np.float32)
        tone = np.sin(2 * np.pi * f0 * t) + 0.4 * np.sin(2 * np.pi * 2 * f0 * t) + 0.2 * np.sin(2 * np.pi * 3 * f0 * t)
        gate = np.convolve(gate, np.ones(80) / 80, mode="same")
        return (tone * gate).astype(np.float32)
    base = rng.uniform(500, 1500)  # ringing bell: inharmonic partials, repeated strikes
    strike = damped_partials(rng, int(sr * 0.6), sr, base * np.array([1.0, 2.76, 5.40, 8.93]), rng.uniform(0.08, 0.3))
    out = np.zeros(n, dtype=np.float32)
    step = int(sr / rng.uniform(5, 12))
    for start in range(0, n, step):
        place(out, strike, start)
    return out


def blender(rng, n, sr):
    f0 = rng.uniform(80, 250) * (1 + 0.03 * smooth_random(rng, n, sr, 2.0))
    motor = harmonic(rng, f0, sr, 40, rolloff=0.6)
    noise = band_noise(rng, n, sr, rng.uniform(800, 1500), rng.uniform(3500, 6000))
    load = 1 + 0.3 * smooth_random(rng, n, sr, 1.5)
    return (0.7 * motor + 0.6 * noise) * load


def cat(rng, n, sr):
    peak = rng.uniform(550, 950)
    start, end = rng.uniform(350, 500), rng.uniform(300, 450)
    shape = np.sin(np.linspace(0, np.pi, n)) ** rng.uniform(0.6, 1.5)
    f0 = np.where(np.arange(n) < n / 2, start + (peak - start) * shape, end + (peak - end) * shape)
    formants = [(rng.uniform(700, 1100), 250.0), (rng.uniform(1800, 2600), 400.0)]
    voice = harmonic(rng, f0, sr, 14, rolloff=0.8, formants=formants)
    return voice * np.sin(np.linspace(0, np.pi, n)) ** 0.5


def dishes(rng, n, sr):
    out = np.zeros(n, dtype=np.float32)
    count = max(1, int(n / sr * rng.uniform(2, 7)))
    for _ in range(count):
        clink = damped_partials(rng, int(sr * 0.25), sr, rng.uniform(2000, 7000, size=3), rng.uniform(0.02, 0.08))
        place(out, clink * rng.uniform(0.4, 1.0), int(rng.integers(0, max(1, n - sr // 20))))
    return out


def dog(rng, n, sr):
    out = np.zeros(n, dtype=np.float32)
    barks = int(rng.integers(1, 5))
    bark_len = int(sr * rng.uniform(0.1, 0.25))
    for i in range(barks):
        f0 = np.linspace(rng.uniform(350, 650), rng.uniform(200, 350), bark_len)
        formants = [(rng.uniform(500, 900), 300.0), (rng.uniform(1200, 2000), 500.0)]
        bark = harmonic(rng, f0, sr, 20, rolloff=0.5, formants=formants) + 0.5 * band_noise(
            rng, bark_len, sr, 300, 3000
        )
        bark *= np.exp(-np.linspace(0, rng.uniform(2, 5), bark_len))
        start = int(i * n / barks + rng.uniform(0, 0.3) * n / barks)
        place(out, fade(bark.astype(np.float32), sr, 0.005), min(start, max(0, n - bark_len)))
    return out


def shaver(rng, n, sr):
    f0 = rng.uniform(90, 220) * (1 + 0.01 * smooth_random(rng, n, sr, 3.0))
    buzz = harmonic(rng, f0, sr, 60, rolloff=0.3, odd_only=rng.random() < 0.5)
    return buzz + 0.3 * band_noise(rng, n, sr, 3000, 7000)


def frying(rng, n, sr):
    impulses = np.zeros(n, dtype=np.float32)
    count = int(n / sr * rng.uniform(100, 400))
    impulses[rng.integers(0, n, size=count)] = rng.uniform(-1, 1, size=count) ** 3
    crackle = np.convolve(impulses, np.exp(-np.arange(40) / 6.0), mode="same")
    crackle = np.fft.irfft(np.fft.rfft(crackle) * (np.fft.rfftfreq(n, 1 / sr) > 1500), n)
    crackle = crackle / (np.std(crackle) + 1e-9)
    hiss = band_noise(rng, n, sr, 3000, 7800)
    return (crackle + rng.uniform(0.2, 0.6) * hiss).astype(np.float32)


def running_water(rng, n, sr):
    low, high = rng.uniform(200, 500), rng.uniform(2000, 4000)
    noise = band_noise(rng, n, sr, low, high)
    bubbles = np.abs(1 + 0.6 * smooth_random(rng, n, sr, rng.uniform(10, 30)))
    out = noise * bubbles
    t = np.arange(int(sr * 0.03)) / sr
    for start in rng.integers(0, max(1, n - len(t)), size=int(n / sr * rng.uniform(5, 20))):
        f = rng.uniform(600, 2500)
        chirp = np.sin(2 * np.pi * (f * t + 8000 * t**2)) * np.hanning(len(t))
        place(out, 1.5 * chirp.astype(np.float32), int(start))
    return out


def speech(rng, n, sr, n_harmonics=40):
    base = rng.uniform(90, 260)
    f0 = base * (1 + 0.12 * smooth_random(rng, n, sr, 3.0))
    out = np.zeros(n, dtype=np.float32)
    pos = 0
    while pos < n:
        syl = int(sr * rng.uniform(0.12, 0.3))
        seg = min(syl, n - pos)
        formants = [(rng.uniform(300, 850), 120.0), (rng.uniform(900, 2400), 200.0), (rng.uniform(2400, 3200), 300.0)]
        voiced = harmonic(rng, f0[pos : pos + seg], sr, n_harmonics, rolloff=0.7, formants=formants)
        out[pos : pos + seg] = voiced * np.sin(np.linspace(0, np.pi, seg)) ** 0.7
        pos += seg + int(sr * rng.uniform(0.0, 0.12))
    return out


def vacuum(rng, n, sr):
    peak = rng.uniform(1000, 4000)
    gains = -12 * np.abs(np.log2(BAND_CENTERS_HZ / peak)) / 2
    body = shaped_noise(rng, n, sr, gains)
    whine_f = rng.uniform(800, 3000)
    t = np.arange(n) / sr
    whine = np.sin(2 * np.pi * whine_f * t) + 0.3 * np.sin(2 * np.pi * 2 * whine_f * t)
    return body + rng.uniform(0.2, 0.5) * whine.astype(np.float32)


EVENT_SOURCES = {
    "Alarm_bell_ringing": (alarm, (0.5, 3.0)),
    "Blender": (blender, (1.5, 5.0)),
    "Cat": (cat, (0.4, 1.4)),
    "Dishes": (dishes, (0.3, 2.0)),
    "Dog": (dog, (0.3, 1.5)),
    "Electric_shaver_toothbrush": (shaver, (1.5, 5.0)),
    "Frying": (frying, (2.0, 7.0)),
    "Running_water": (running_water, (1.5, 6.0)),
    "Speech": (speech, (0.6, 3.0)),
    "Vacuum_cleaner": (vacuum, (2.0, 7.0)),
}


def render_event(rng, label: str, seconds: float, sr: int) -> np.ndarray:
    source, _ = EVENT_SOURCES[label]
    n = max(int(seconds * sr), sr // 50)
    signal = np.asarray(source(rng, n, sr), dtype=np.float32)[:n]
    signal = signal / (np.sqrt(np.mean(signal**2)) + 1e-9)
    return fade(signal, sr, 0.01)


# --------------------------------------------------------------------------------- scenes
# Spectral envelope (dB at BAND_CENTERS_HZ) and texture of each TAU scene. Related scenes
# (bus/tram/metro, park/public_square, street_*) are deliberately close.
SCENE_SPECS = {
    "airport": dict(
        gains=[-6, -3, 0, 0, -3, -8, -14, -22], mod=(0.3, 0.2), hum=[(120, 0.1)], babble=0.35, clicks=0.5, chirps=0.0
    ),
    "bus": dict(
        gains=[6, 6, 2, -3, -8, -14, -20, -28], mod=(0.5, 0.3), hum=[(85, 0.35)], babble=0.15, clicks=0.3, chirps=0.0
    ),
    "metro": dict(
        gains=[4, 5, 3, -1, -4, -6, -12, -20], mod=(0.8, 0.4), hum=[(1900, 0.12)], babble=0.1, clicks=2.0, chirps=0.0
    ),
    "metro_station": dict(
        gains=[0, 2, 2, 0, -3, -7, -12, -20], mod=(0.2, 0.5), hum=[(400, 0.08)], babble=0.25, clicks=1.0, chirps=0.0
    ),
    "park": dict(
        gains=[-10, -8, -6, -6, -6, -4, -6, -16], mod=(0.15, 0.3), hum=[], babble=0.05, clicks=0.2, chirps=3.0
    ),
    "public_square": dict(
        gains=[-6, -5, -3, -3, -4, -6, -9, -18], mod=(0.2, 0.3), hum=[], babble=0.3, clicks=0.6, chirps=1.0
    ),
    "shopping_mall": dict(
        gains=[-6, -3, -1, 0, -2, -7, -13, -22], mod=(0.2, 0.15), hum=[(220, 0.1)], babble=0.6, clicks=0.8, chirps=0.0
    ),
    "street_pedestrian": dict(
        gains=[-3, -2, -2, -2, -3, -6, -10, -18], mod=(0.3, 0.3), hum=[], babble=0.35, clicks=2.0, chirps=0.3
    ),
    "street_traffic": dict(
        gains=[4, 3, 1, -1, -3, -6, -10, -17], mod=(0.12, 0.7), hum=[], babble=0.05, clicks=0.2, chirps=0.0
    ),
    "tram": dict(
        gains=[3, 4, 2, -2, -6, -10, -16, -24],
        mod=(0.6, 0.3),
        hum=[(60, 0.2), (1200, 0.06)],
        babble=0.2,
        clicks=0.5,
        chirps=0.0,
    ),
}

# Events typical of each scene (relative weights over the DESED classes).
SCENE_EVENTS = {
    "airport": {"Speech": 4, "Alarm_bell_ringing": 2, "Vacuum_cleaner": 2, "Electric_shaver_toothbrush": 1},
    "bus": {"Speech": 4, "Alarm_bell_ringing": 2, "Dog": 1},
    "metro": {"Speech": 3, "Alarm_bell_ringing": 3, "Electric_shaver_toothbrush": 1},
    "metro_station": {"Alarm_bell_ringing": 3, "Speech": 3, "Vacuum_cleaner": 2, "Running_water": 1},
    "park": {"Dog": 4, "Cat": 2, "Running_water": 2, "Speech": 1},
    "public_square": {"Speech": 3, "Dog": 2, "Running_water": 3, "Cat": 1},
    "shopping_mall": {"Speech": 3, "Dishes": 3, "Blender": 2, "Frying": 2},
    "street_pedestrian": {"Speech": 4, "Dog": 2, "Cat": 2},
    "street_traffic": {"Alarm_bell_ringing": 3, "Dog": 1, "Speech": 1},
    "tram": {"Alarm_bell_ringing": 4, "Speech": 3},
}


def scene_texture(rng, spec: dict, n: int, sr: int) -> np.ndarray:
    """A scene background from (already jittered) scene parameters; unit RMS."""
    out = shaped_noise(rng, n, sr, np.asarray(spec["gains"], dtype=float))
    rate, depth = spec["mod"]
    out *= np.clip(1 + depth * smooth_random(rng, n, sr, rate * 4), 0.1, None)
    for freq, level in spec["hum"]:
        drift = 1 + 0.01 * smooth_random(rng, n, sr, 0.5)
        out += level * 4 * np.sin(2 * np.pi * np.cumsum(freq * drift) / sr).astype(np.float32)
    if spec["babble"] > 0:
        voices = sum(speech(rng, n, sr, n_harmonics=16) for _ in range(3)) / 3
        out += spec["babble"] * 1.5 * voices
    for start in rng.integers(0, max(1, n - sr // 20), size=rng.poisson(spec["clicks"] * n / sr)):
        click = band_noise(rng, sr // 25, sr, 200, 4000) * np.exp(-np.arange(sr // 25) / (sr * 0.008))
        place(out, 2.0 * click, int(start))
    for start in rng.integers(0, max(1, n - sr // 8), size=rng.poisson(spec["chirps"] * n / sr)):
        m = sr // 10
        f = np.linspace(rng.uniform(2500, 4000), rng.uniform(4000, 6500), m)
        chirp = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.hanning(m)
        place(out, 1.2 * chirp.astype(np.float32), int(start))
    return out / (np.sqrt(np.mean(out**2)) + 1e-9)
