"""Audio in bounded memory: a recording read block by block (soundfile), mixed to mono and resampled
(soxr's streaming resampler), and cut into the windows a model takes as the blocks arrive."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator

import numpy as np
import soundfile as sf
import soxr

from keras_mtl.core.errors import DataError
from keras_mtl.data.audio import fix_length

#: seconds of audio read per block
BLOCK_SECONDS = 4.0


def file_info(path: str | os.PathLike) -> tuple[float, int]:
    """(duration in seconds, sample rate) of an audio file from its header; DataError naming the file
    when it is missing, not audio or empty."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: audio file not found")
    try:
        info = sf.info(os.fspath(path))
    except FileNotFoundError:
        raise DataError(f"{path}: audio file not found") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: unreadable audio ({_reason(exc)})") from None
    if info.frames <= 0:
        raise DataError(f"{path}: empty audio file (0 samples)")
    return info.frames / info.samplerate, int(info.samplerate)


def audio_blocks(
    path: str | os.PathLike, sample_rate: int, block_seconds: float = BLOCK_SECONDS
) -> Iterator[np.ndarray]:
    """float32 mono blocks of ``path`` at ``sample_rate`` (channels averaged, soxr HQ resampling, as
    keras_mtl.data.audio.load_audio reads whole files); memory bounded by one block.
    DataError naming the file when it cannot be read or holds non-finite samples."""
    file_rate = file_info(path)[1]
    resampler = (
        soxr.ResampleStream(file_rate, sample_rate, 1, dtype="float32", quality="HQ")
        if file_rate != sample_rate
        else None
    )
    size = max(1, int(block_seconds * file_rate))
    try:
        with sf.SoundFile(os.fspath(path)) as handle:
            while True:
                data = handle.read(size, dtype="float32", always_2d=True)
                last = data.shape[0] < size
                mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
                if not np.all(np.isfinite(mono)):
                    raise DataError(f"{path}: audio contains NaN or infinite samples")
                if resampler is not None:
                    mono = resampler.resample_chunk(np.ascontiguousarray(mono), last=last)
                if len(mono):
                    yield np.ascontiguousarray(mono, dtype=np.float32)
                if last:
                    return
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise DataError(f"{path}: unreadable audio ({_reason(exc)})") from None


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """Windows of ``length`` samples every ``step`` samples, padded with ``pad``
    (keras_mtl.data.audio.fix_length). ``tiling``: the frame-task rule of keras_mtl.data.items.windows_of
    (consecutive windows, the last one shorter); otherwise windows start every ``step`` until one reaches
    the end (a ``step`` longer than ``length`` skips audio: windows start inside the recording only)."""

    length: int
    step: int
    pad: str = "zeros"
    tiling: bool = False

    def count(self, samples: int, sample_rate: int) -> int:
        """How many windows a recording of ``samples`` samples has (at least one)."""
        seconds, window = samples / sample_rate, self.length / sample_rate
        if seconds <= window + 0.01:
            return 1
        if self.tiling:
            return int(np.ceil((seconds - 0.01) / window))
        return min(1 + int(np.ceil((samples - self.length) / self.step)), int(np.ceil(samples / self.step)))


@dataclasses.dataclass
class Window:
    """One window: its index, first sample, the samples of audio it covers, and its padded audio."""

    index: int
    start: int
    covered: int
    audio: np.ndarray


class WindowCutter:
    """Cuts a stream of blocks into the windows of several ``WindowSpec`` at once, keeping only the
    samples the next windows need: ``feed(block)`` yields (spec index, Window) of every window complete
    so far; ``finish()`` those left at the end of the stream (the last ones padded)."""

    def __init__(self, specs: list[WindowSpec], sample_rate: int):
        self.specs = specs
        self.sample_rate = sample_rate
        self.buffer = np.zeros(0, np.float32)
        self.offset = 0  # absolute index of buffer[0]
        self.received = 0
        self.next = [0] * len(specs)

    def _start(self, spec_index: int, window_index: int) -> int:
        spec = self.specs[spec_index]
        if spec.tiling:
            return window_index * spec.length
        return window_index * spec.step

    def _take(self, spec_index: int, end: int | None) -> Iterator[tuple[int, Window]]:
        spec = self.specs[spec_index]
        while True:
            start = self._start(spec_index, self.next[spec_index])
            if end is None:
                if start + spec.length > self.received:
                    return
            elif self.next[spec_index] >= end:
                return
            piece = self.buffer[start - self.offset : start - self.offset + spec.length]
            window = Window(self.next[spec_index], start, len(piece), fix_length(piece, spec.length, spec.pad))
            self.next[spec_index] += 1
            yield spec_index, window

    def _trim(self) -> None:
        keep = min(self.received, *(self._start(i, n) for i, n in enumerate(self.next)))
        if keep > self.offset:
            self.buffer = self.buffer[keep - self.offset :]
            self.offset = keep

    def feed(self, block: np.ndarray) -> Iterator[tuple[int, Window]]:
        self.buffer = np.concatenate([self.buffer, np.asarray(block, np.float32)])
        self.received += len(block)
        for index in range(len(self.specs)):
            yield from self._take(index, None)
        self._trim()

    def finish(self) -> Iterator[tuple[int, Window]]:
        if self.received == 0:
            return
        for index, spec in enumerate(self.specs):
            yield from self._take(index, spec.count(self.received, self.sample_rate))
        self._trim()


def windows(blocks: Iterable[np.ndarray], specs: list[WindowSpec], sample_rate: int) -> Iterator[tuple[int, Window]]:
    """Every window of ``specs`` over a stream of blocks, in the order they complete."""
    cutter = WindowCutter(specs, sample_rate)
    for block in blocks:
        yield from cutter.feed(block)
    yield from cutter.finish()


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
