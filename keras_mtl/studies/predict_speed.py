"""How fast ``keras-mtl predict`` runs and how much memory it needs, by the length of a recording.

For each length, a recording is generated (noise with tone bursts, 16-bit WAV at the model's sample
rate), and ``keras-mtl predict MODEL FILE`` runs on it in a process of its own, so that each
process's peak resident memory (``wait4``'s ru_maxrss) is that length's alone. Reported per length:
the processing real-time factor (audio seconds / seconds predict spent on the recording, from
predict.json: reading, features, network, post-processing; model loading excluded), the wall time of
the whole command, and the peak memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from keras_mtl.core.errors import ConfigError


@dataclasses.dataclass
class SpeedRow:
    minutes: float
    audio_seconds: float
    processing_seconds: float
    real_time_factor: float
    wall_seconds: float
    peak_memory_mb: float


def write_recording(path: Path, seconds: float, sample_rate: int, block_seconds: float = 60.0) -> None:
    """Noise with a 1 kHz tone burst every 7 s, written block by block (16-bit PCM)."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, subtype="PCM_16") as handle:
        done = 0
        total = int(seconds * sample_rate)
        while done < total:
            n = min(int(block_seconds * sample_rate), total - done)
            t = (done + np.arange(n)) / sample_rate
            tone = 0.3 * np.sin(2 * np.pi * 1000 * t) * ((t % 7.0) < 1.5)
            handle.write((0.05 * rng.standard_normal(n) + tone).astype(np.float32))
            done += n


def measure(model: str | os.PathLike, minutes: list[float], sample_rate: int, command: list[str]) -> list[SpeedRow]:
    """One row per length; ``command``: how to call keras-mtl (e.g. [python, -m, keras_mtl.cli.main])."""
    if not minutes or any(m <= 0 for m in minutes):
        raise ConfigError("--benchmark takes positive minutes, e.g. 1,60")
    rows = []
    with tempfile.TemporaryDirectory(prefix="keras-mtl-predict-speed-") as folder:
        folder = Path(folder)
        for length in minutes:
            audio = folder / f"{length:g}min.wav"
            write_recording(audio, length * 60.0, sample_rate)
            out = folder / f"out-{length:g}"
            started = time.monotonic()
            process = subprocess.Popen(
                [*command, "predict", str(model), str(audio), "--output", str(out), "-q"], stdout=subprocess.DEVNULL
            )
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.monotonic() - started
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                raise ConfigError(f"keras-mtl predict on {audio.name} exited {process.returncode}")
            report = json.loads((out / "predict.json").read_text())
            rss_kb = usage.ru_maxrss  # kilobytes on Linux
            rows.append(
                SpeedRow(
                    length,
                    report["audio_seconds"],
                    report["processing_seconds"],
                    report["real_time_factor"],
                    round(wall, 1),
                    round(rss_kb / 1024, 1),
                )
            )
            audio.unlink()
    return rows


def table(rows: list[SpeedRow], model: str) -> str:
    lines = [
        f"keras-mtl predict {model} ({os.cpu_count()} CPU cores)",
        "",
        "| recording | processing s | real-time factor | wall s (whole command) | peak memory MB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.minutes:g} min | {r.processing_seconds:.1f} | {r.real_time_factor:.0f}x | {r.wall_seconds:.1f} | "
            f"{r.peak_memory_mb:.0f} |"
        )
    return "\n".join(lines)


def default_command() -> list[str]:
    return [sys.executable, "-m", "keras_mtl.cli.main"]
