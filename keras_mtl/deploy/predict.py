"""Run a trained or exported model on recordings: ``keras-mtl predict`` and the ``Predictor`` class.

The model is a run folder (its float Keras network) or an export folder (the int8 streaming pieces
in LiteRT: stepped or windowed encoder, clip heads, frame steps — the firmware's chain, read from the
settings inside the ``.tflite`` files alone). Recordings of any length, sample rate and channel count
are read block by block, mixed to mono and resampled as training reads them, and cut into each task's
windows as evaluation cuts a test recording:

- frame tasks (SED, VAD, ...): consecutive windows of the task's clip length, each window's scores
  stitched in order and cut to the recording, then the task's median filter and threshold
  (keras_mtl.tasks.metrics.postprocess) -> events ``filename onset offset event_label`` (the DCASE
  detection format, seconds); the raw scores on request in the sed_scores_eval format (one TSV per
  recording: ``onset offset <class>...``);
- clip tasks (ASC, SCR, ...): windows of the clip length every ``hop`` seconds (the last one reaching
  the end); a label and class scores per window, and per file the scores averaged over its windows,
  each weighted by the seconds of audio it covers (a recording no longer than the clip: one window,
  as evaluation scores it; rows ``filename label <class scores>``, as DCASE task 1 submissions).

Log-mel features are rounded to float16 as the training cache stores them, so a run's own test
recordings get the events and labels its evaluation computed. Memory does not grow with a
recording's length beyond its output (events, window rows). Source of the formats: DCASE 2024
task 1 / task 4 submission formats; sed_scores_eval (Ebbers et al. 2022) for the score files.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import soundfile
from scipy.ndimage import median_filter
from tqdm.auto import tqdm

from keras_mtl import __version__
from keras_mtl.core import fileio, reporting
from keras_mtl.core.backend import tf
from keras_mtl.core.errors import ConfigError, DataError, UserError
from keras_mtl.data import stream
from keras_mtl.deploy import metadata
from keras_mtl.deploy.streaming import StreamingRunner
from keras_mtl.deploy.tflite import Int8Model, int8_call
from keras_mtl.features.logmel import FrontEndConfig, LogMel
from keras_mtl.models.mtl import task_submodel
from keras_mtl.runs.folder import open_run
from keras_mtl.runs.network import time_resolution
from keras_mtl.tasks.registry import ClipClassificationTask, FrameDetectionTask

log = logging.getLogger(__name__)

#: the JSON written beside the TSV files, one per run of the command
REPORT = "predict.json"
#: seconds of audio at most in one batch of windows (a float network's memory is set by it)
BATCH_SECONDS = 128.0
#: columns at most in a --plot picture's spectrogram (longer recordings are averaged down to it)
PLOT_COLUMNS = 3000


# ----------------------------------------------------------------------------------------- models
class FloatModel:
    """A run folder's trained network: each task's path on (batch, frames, mels) log-mel features."""

    kind = "run"
    batched = True  # one call per batch of windows (padded to a power of two)

    def __init__(self, run_dir: Path):
        run = open_run(run_dir)
        self.path = run.path
        self.tasks = list(run.tasks)
        self.frontend = run.config.frontend
        factor, _ = time_resolution(run.config)
        self.frame_seconds = self.frontend.frame_seconds * factor
        network = run.network()
        self._paths = {}
        for task in self.tasks:
            path = task_submodel(network, task.name)
            self._paths[task.name] = tf.function(lambda x, model=path: model(x, training=False), reduce_retracing=True)
        self.description = f"float Keras network of {run.path}"

    def scores(self, tasks, features: np.ndarray) -> dict[str, np.ndarray]:
        """{task: (batch, ...) outputs} for a batch of windows' features (batch, frames, mels)."""
        batch = tf.constant(features)
        return {task.name: np.asarray(self._paths[task.name](batch)) for task in tasks}


class Int8Export:
    """An export folder's int8 pieces in LiteRT, run as the firmware runs them (StreamingRunner); the
    front end, the streaming plan and the tasks come from the settings inside the ``.tflite`` files."""

    kind = "export"
    batched = False  # window by window, piece by piece, as the device runs them

    def __init__(self, export_dir: Path):
        files = sorted(export_dir.glob("*.tflite"))
        documents, models = {}, {}
        for file in files:
            flatbuffer = file.read_bytes()
            document = metadata.read(flatbuffer)
            if document is None:
                continue  # not a piece of a keras-mtl export
            documents[file.stem] = document
            models[file.stem] = Int8Model(flatbuffer)
        if not documents:
            raise ConfigError(
                f"{export_dir}: no exported model (.tflite with keras-mtl settings) here; pass a run folder or "
                "an export folder written by keras-mtl export"
            )
        first = next(iter(documents.values()))
        self.path = export_dir
        self.frontend = FrontEndConfig(**first["frontend"])
        self.plan = _plan_from_settings(first["streaming"], documents, models)
        self.frame_seconds = self.plan.hop_frames * self.frontend.frame_seconds / self.plan.output_frames
        tasks = {}
        for document in documents.values():
            if "task" in document and document["task"]["name"] not in tasks:
                tasks[document["task"]["name"]] = _task_from_settings(document["task"])
        order = [p.task for p in self.plan.pieces if p.task is not None]
        self.tasks = [tasks[name] for name in dict.fromkeys(order)]
        self.runner = StreamingRunner(self.plan, int8_call(models))
        self._pieces = {p.task: p for p in self.plan.pieces if p.task is not None}
        self.description = f"int8 streaming pieces of {export_dir} (LiteRT)"

    def scores(self, tasks, features: np.ndarray) -> dict[str, np.ndarray]:
        out = {task.name: [] for task in tasks}
        for clip in features:
            embeddings = None
            if any(self._pieces[t.name].kind != "clip_model" for t in tasks) and self.plan.branches:
                embeddings = self.runner.embeddings(clip)
            for task in tasks:
                out[task.name].append(self.runner.predict(self._pieces[task.name], clip, embeddings))
        return {name: np.stack(values) for name, values in out.items()}


def _plan_from_settings(streaming: dict, documents: dict, models: dict) -> SimpleNamespace:
    """A StreamingPlan's fields from an export's settings (keras_mtl.deploy.metadata): pieces whose
    ``model`` names its inputs and outputs as the Keras piece did."""
    pieces = []
    for name, document in documents.items():
        piece = document["piece"]
        model = models[name]
        shapes = {d["key"]: tuple(int(v) for v in d["shape"]) for d in model.inputs}
        order = {"frame_step": ["frame", "state"], "clip_head": ["frames"], "clip_model": ["mel"]}.get(piece["kind"])
        inputs = [SimpleNamespace(shape=shapes[key]) for key in (order or model.input_names())]
        pieces.append(
            SimpleNamespace(
                name=name,
                kind=piece["kind"],
                task=piece["task"],
                branch=piece["branch"],
                windows=piece["windows"],
                model=SimpleNamespace(inputs=inputs, output_names=model.output_names()),
            )
        )
    step = metadata.step_from_settings(streaming)
    by_name = {p.name: p for p in pieces}
    return SimpleNamespace(
        window_frames=streaming["window_frames"],
        hop_frames=streaming["hop_frames"],
        context_frames=streaming["context_frames"],
        output_frames=streaming["output_frames"],
        pad_value=np.asarray(streaming["pad_value"], np.float32),
        branches=list(streaming["branches"]),
        pieces=pieces,
        step=step,
        piece=by_name.__getitem__,
    )


def _task_from_settings(settings: dict):
    common = dict(
        name=settings["name"],
        classes=tuple(settings["classes"]),
        clip_seconds=float(settings["clip_seconds"]),
        corpus="",
        train_split="",
        test_split="",
        title=settings.get("title", "") if settings.get("title") != settings["name"] else "",
    )
    if settings["level"] == "clip":
        return ClipClassificationTask(**common)
    return FrameDetectionTask(
        **common, median_filter_frames=int(settings["median_filter_frames"]), threshold=float(settings["threshold"])
    )


def load_model(path: str | os.PathLike):
    """A run folder (config.yaml + model.keras) -> FloatModel; an export folder -> Int8Export.
    ConfigError when ``path`` is neither."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such folder (pass a run folder or an export folder)")
    if (path / "config.yaml").is_file() and (path / "model.keras").exists():
        return FloatModel(path)
    if any(path.glob("*.tflite")):
        return Int8Export(path)
    raise ConfigError(f"{path}: neither a run folder (config.yaml, model.keras) nor an export folder (*.tflite)")


# ------------------------------------------------------------------------------- post-processing
class FrameEvents:
    """A frame task's scores of one recording, window by window -> events, in bounded memory: the
    median filter runs over what has come so far, with ``nearest`` edges as scipy applies them to a
    whole recording, so the events equal keras_mtl.tasks.metrics.postprocess + frames_to_events."""

    def __init__(self, task, frame_seconds: float):
        self.task = task
        self.frame_seconds = frame_seconds
        self.size = max(1, int(task.median_filter_frames))
        self.left, self.right = self.size // 2, self.size - 1 - self.size // 2
        self.history: np.ndarray | None = None  # the last `left` raw frames already filtered
        self.pending = np.zeros((0, task.n_classes), np.float32)
        self.done = 0  # frames filtered so far
        self.open = np.full(task.n_classes, -1)  # onset frame of each class's open event
        self.events: list[tuple[float, float, str]] = []

    def add(self, scores: np.ndarray) -> None:
        self.pending = np.concatenate([self.pending, np.asarray(scores, np.float32)])
        self._filter(final=False)

    def finish(self, frames: int, duration: float) -> list[tuple[float, float, str]]:
        """Close the recording: ``frames`` output frames start inside its ``duration`` seconds."""
        self.pending = self.pending[: max(0, frames - self.done)]
        if len(self.pending) or self.done:
            self._filter(final=True)
        for c, label in enumerate(self.task.classes):
            if self.open[c] >= 0:
                self.events.append(
                    (
                        float(self.open[c] * self.frame_seconds),
                        float(min(self.done * self.frame_seconds, duration)),
                        label,
                    )
                )
        return sorted(self.events)

    def _filter(self, final: bool) -> None:
        if not len(self.pending):
            return
        if self.size <= 1:
            ready, self.pending = self.pending, self.pending[:0]
            self._detect(ready)
            return
        if self.history is None:
            self.history = np.repeat(self.pending[:1], self.left, axis=0)
        values = np.concatenate([self.history, self.pending])
        if final:
            values = np.concatenate([values, np.repeat(values[-1:], self.right, axis=0)])
        usable = len(values) - len(self.history) - self.right
        if usable <= 0:
            return
        filtered = median_filter(values, size=(self.size, 1), mode="nearest")
        start = len(self.history)
        self._detect(filtered[start : start + usable])
        raw = np.concatenate([self.history, self.pending[:usable]])
        self.history = raw[len(raw) - self.left :] if self.left else raw[:0]
        self.pending = self.pending[usable:]

    def _detect(self, filtered: np.ndarray) -> None:
        active = filtered > self.task.threshold
        for c, label in enumerate(self.task.classes):
            column = np.concatenate([[self.open[c] >= 0], active[:, c]]).astype(np.int8)
            for k in np.flatnonzero(np.diff(column)):  # a change between row k - 1 and row k of this part
                index = self.done + int(k)
                if column[k + 1]:
                    self.open[c] = index
                else:
                    self.events.append(
                        (float(self.open[c] * self.frame_seconds), float(index * self.frame_seconds), label)
                    )
                    self.open[c] = -1
        self.done += len(filtered)


@dataclasses.dataclass
class ClipWindows:
    """A clip task's windows of one recording: one row per window, and the file's scores averaged
    over them, each weighted by the seconds of audio it covers."""

    task: object
    rows: list = dataclasses.field(default_factory=list)  # (onset, offset, label, scores)
    total: np.ndarray | None = None
    weight: float = 0.0

    def add(self, onset: float, offset: float, scores: np.ndarray) -> tuple[float, float, str, np.ndarray]:
        scores = np.asarray(scores, np.float64)
        row = (onset, offset, self.task.classes[int(np.argmax(scores))], scores)
        self.rows.append(row)
        covered = max(offset - onset, 1e-6)
        self.total = scores * covered if self.total is None else self.total + scores * covered
        self.weight += covered
        return row

    def file_scores(self) -> np.ndarray:
        return self.total / self.weight


# ----------------------------------------------------------------------------------- recordings
@dataclasses.dataclass
class FileResult:
    """What the model found in one recording (times in seconds)."""

    file: str
    name: str
    seconds: float
    events: dict = dataclasses.field(default_factory=dict)  # frame task -> [(onset, offset, label)]
    labels: dict = dataclasses.field(default_factory=dict)  # clip task -> (label, scores)
    windows: dict = dataclasses.field(default_factory=dict)  # clip task -> [(onset, offset, label, scores)]
    scores: dict = dataclasses.field(default_factory=dict)  # frame task -> (frames, classes) raw, when kept
    error: str | None = None
    spectrogram: tuple | None = None  # (columns, frames averaged per column), with --plot


@dataclasses.dataclass
class _Group:
    """Tasks that share windows (level, clip length, padding)."""

    spec: stream.WindowSpec
    tasks: list
    seconds: float
    batch: int  # windows per call


class Predictor:
    """A run or export folder ready to answer every task on recordings (see the module docstring).

    ``hop``: seconds between clip-task windows on recordings longer than the clip (default: the clip
    length); ``batch``: windows per call of the float network, at most BATCH_SECONDS of audio (rounded
    to powers of two: memory is set by the batch, not by the recording's length); ``share_frames``: clip
    tasks' windows take the log-mel frames the frame tasks' windows computed (the same values; off:
    every window computes its own, for comparisons)."""

    def __init__(self, model, hop: float | None = None, batch: int = 16, share_frames: bool = True):
        # a run or export folder, or a loaded model (FloatModel, Int8Export, or one with their interface)
        self.model = model if hasattr(model, "scores") else load_model(model)
        self.tasks = self.model.tasks
        self.frontend = self.model.frontend
        if hop is not None and hop <= 0:
            raise ConfigError(f"--hop must be positive seconds, not {hop}")
        self.hop = hop
        self.share_frames = share_frames
        self.batch = 1 << max(0, int(batch) - 1).bit_length()  # rounded up to a power of two
        # always called on (windows, samples); values rounded to float16 as the training cache stores them
        self._logmel = LogMel(self.frontend, float16_values=True)
        self._full: dict[int, bool] = {}  # group index -> a full batch has run (its shapes are traced)
        rate = self.frontend.sample_rate
        groups: dict[tuple, _Group] = {}
        for task in self.tasks:
            length = int(round(task.clip_seconds * rate))
            if task.level == "frame":
                spec = stream.WindowSpec(length, length, task.pad_mode, tiling=True)
            else:
                spec = stream.WindowSpec(length, int(round((hop or task.clip_seconds) * rate)), task.pad_mode)
            windows = max(1, min(self.batch, int(BATCH_SECONDS // task.clip_seconds)))
            batch = 1 << (windows.bit_length() - 1)  # a power of two, at most `windows`
            groups.setdefault((task.level, spec), _Group(spec, [], task.clip_seconds, batch)).tasks.append(task)
        self.groups = list(groups.values())

    # ------------------------------------------------------------------ one recording
    def _window_features(self, windows: list, size: int, lent: list) -> np.ndarray:
        """(size, frames, mels) log-mel of ``windows`` (zero windows after them up to ``size``), as one
        batched ``LogMel.raw`` call computes them (bit for bit; ``LogMel.finish`` makes them features). A full window that lies inside one of the
        ``lent`` windows (start, covered, features), at a whole number of hops from its start, takes
        that window's frames except the few its own edges change (those whose samples reach past the
        window): recomputed from the window's padded audio (LogMel.frames). Frame tasks' windows lend
        their frames to clip tasks' windows so that the FFTs run once per stretch of audio."""
        hop, left = self.frontend.hop_length, self._logmel.left_padding
        length = len(windows[0].audio)
        count = 1 + (length + 2 * left - self.frontend.window_length) // hop  # the frames LogMel gives
        starts = np.arange(count) * hop - left
        edges = np.flatnonzero((starts < 0) | (starts + self.frontend.window_length > length))
        borrowed = []
        for window in windows:
            source = None
            if window.covered == length:
                for start, covered, values in lent:
                    offset = window.start - start
                    if 0 <= offset and offset % hop == 0 and window.start + length <= start + covered:
                        source = values[offset // hop : offset // hop + count]
                        break
            borrowed.append(source if source is not None and len(source) == count else None)
        if any(source is None for source in borrowed):
            audio = np.stack([w.audio for w in windows])
            if size > len(windows):
                audio = np.concatenate([audio, np.zeros((size - len(windows), length), np.float32)])
            direct = self._logmel.raw(audio)
            if all(source is None for source in borrowed):
                return direct
        else:  # the windows after ``windows`` only fill the batch: their outputs are dropped
            direct = np.zeros((size, count, self.frontend.n_mels), np.float32)
        features = np.array(direct, np.float32)
        mine = [k for k, source in enumerate(borrowed) if source is not None]
        padded = np.pad(np.stack([windows[k].audio for k in mine]), [[0, 0], [left, left]])
        width = self.frontend.window_length
        segments = np.stack([padded[:, e * hop : e * hop + width] for e in edges], axis=1)  # (windows, edges, W)
        calls = size  # the batch's shape: no other shape traced
        segments = np.concatenate([segments, np.zeros((calls - len(mine), *segments.shape[1:]), np.float32)])
        edge_values = self._logmel.frames(segments.reshape(-1, width)).reshape(calls, len(edges), -1)
        for row, k in enumerate(mine):
            features[k] = borrowed[k]
            features[k, edges] = edge_values[row]
        return features

    def run_stream(
        self,
        blocks: Iterable[np.ndarray],
        name: str = "stream",
        keep_scores: bool = False,
        on_window: Callable | None = None,
        on_event: Callable | None = None,
        plot_frames: int | None = None,
        immediate: bool = False,
    ) -> FileResult:
        """Every task over a stream of float32 mono blocks at the front end's sample rate.
        ``on_window(task, row)`` gets each clip-task window as it is scored, ``on_event(task, event)``
        each frame-task event as it closes (live use). ``plot_frames``: log-mel frames expected, to keep
        a spectrogram for `plot` averaged down to PLOT_COLUMNS. ``immediate``: score every window as soon
        as it is complete (live use), not in batches."""
        rate = self.frontend.sample_rate
        result = FileResult(name, name, 0.0)
        frames = {
            t.name: FrameEvents(t, self.model.frame_seconds) for g in self.groups for t in g.tasks if t.level == "frame"
        }
        clips = {t.name: ClipWindows(t) for g in self.groups for t in g.tasks if t.level == "clip"}
        raw = {name: [] for name in frames} if keep_scores else None
        per_window = {
            t.name: max(1, int(round(t.clip_seconds / self.model.frame_seconds)))
            for t in self.tasks
            if t.level == "frame"
        }
        pending: dict[int, list] = {i: [] for i in range(len(self.groups))}
        spectrogram = _Spectrogram(plot_frames) if plot_frames else None
        plot_group = next((i for i, g in enumerate(self.groups) if g.spec.tiling), 0)
        closed = {name: 0 for name in frames}

        # the frame-task group's log-mel frames, lent to clip-task windows that lie inside its windows
        tiling = next((i for i, g in enumerate(self.groups) if g.spec.tiling), None)
        lending = self.share_frames and tiling is not None and not immediate and len(self.groups) > 1
        lent: list[tuple[int, int, np.ndarray]] = []  # (start, covered, raw log-mel) of the last tiling batch

        def flush(index: int, windows: list | None = None) -> None:
            group = self.groups[index]
            if windows is None:
                windows, pending[index] = pending[index], []
            if not windows:
                return
            # batches of 1, 2, 4, ... windows: a few traced shapes only; once a full batch ran, every batch is full
            size = group.batch if self._full.get(index) else 1 << (len(windows) - 1).bit_length()
            self._full[index] = self._full.get(index) or size == group.batch
            log_mel = self._window_features(windows, size, lent if index != tiling else [])
            if lending and index == tiling:
                lent[:] = [(w.start, w.covered, values) for w, values in zip(windows, log_mel)]
            features = self._logmel.finish(log_mel)  # each window's level from its own first frame, as in training
            if spectrogram is not None and index == plot_group:
                for window, values in zip(windows, features):
                    spectrogram.add(values, window.covered, self.frontend, group.spec)
            outputs = self.model.scores(group.tasks, features if self.model.batched else features[: len(windows)])
            outputs = {name: values[: len(windows)] for name, values in outputs.items()}
            for k, window in enumerate(windows):
                onset = window.start / rate
                for task in group.tasks:
                    scores = outputs[task.name][k]
                    if task.level == "frame":
                        # the window's frames that start inside the recording (a last, padded window has fewer):
                        # evaluation stitches a recording's windows and cuts them to it before post-processing
                        end = (window.start + window.covered) / rate / self.model.frame_seconds
                        inside = int(np.ceil(end - 1e-6)) - int(round(window.start / rate / self.model.frame_seconds))
                        kept = scores[: min(per_window[task.name], max(0, inside))]
                        frames[task.name].add(kept)
                        if raw is not None:
                            raw[task.name].append(np.asarray(kept, np.float32))
                        if on_event is not None:
                            for event in frames[task.name].events[closed[task.name] :]:
                                on_event(task, event)
                            closed[task.name] = len(frames[task.name].events)
                    else:
                        row = clips[task.name].add(onset, (window.start + window.covered) / rate, scores)
                        if on_window is not None:
                            on_window(task, row)
            if lending and index == tiling:
                lend(final=False)

        def lend(final: bool) -> None:
            # clip-task windows up to the end of the frame task's last batch, in batches, with its frames
            end = lent[-1][0] + lent[-1][1] if lent else 0
            for other in range(len(self.groups)):
                if other == tiling:
                    continue
                ready = [w for w in pending[other] if final or w.start + w.covered <= end]
                pending[other] = pending[other][len(ready) :]
                batch = self.groups[other].batch
                for first in range(0, len(ready), batch):
                    flush(other, ready[first : first + batch])

        received = 0
        cutter = stream.WindowCutter([g.spec for g in self.groups], rate)

        def take(windows: Iterator) -> None:
            for index, window in windows:
                pending[index].append(window)
                if lending and index != tiling:
                    continue  # flushed with the frame task's batch that covers it (lend)
                if immediate or len(pending[index]) >= self.groups[index].batch:
                    flush(index)

        for block in blocks:
            received += len(block)
            take(cutter.feed(block))
        if received == 0:
            raise DataError(f"{name}: empty audio (0 samples)")
        take(cutter.finish())
        if lending:
            flush(tiling)
            lend(final=True)
        for index in pending:
            flush(index)
        duration = received / rate
        result.seconds = duration
        count = int(np.ceil(duration / self.model.frame_seconds - 1e-6))
        for task_name, accumulator in frames.items():
            before = len(accumulator.events)
            result.events[task_name] = accumulator.finish(count, duration)
            if on_event is not None:
                for event in accumulator.events[before:]:
                    on_event(accumulator.task, event)
            if raw is not None:
                result.scores[task_name] = np.concatenate(raw[task_name])[:count]
        for task_name, accumulator in clips.items():
            scores = accumulator.file_scores()
            result.labels[task_name] = (accumulator.task.classes[int(np.argmax(scores))], scores)
            result.windows[task_name] = accumulator.rows
        if spectrogram is not None:
            result.spectrogram = spectrogram.image()
        return result

    def predict_file(
        self,
        path: str | os.PathLike,
        name: str | None = None,
        keep_scores: bool = False,
        plot: bool = False,
        progress: bool = False,
    ) -> FileResult:
        """Every task on one recording (any length, rate, channels). DataError when it cannot be read.
        ``progress``: a bar over the recording's seconds when it is longer than a minute."""
        seconds, _ = stream.file_info(path)
        frames = int(seconds * self.frontend.sample_rate / self.frontend.hop_length) + 1 if plot else None
        blocks = stream.audio_blocks(path, self.frontend.sample_rate)
        bar = None
        if progress and seconds > 60:
            bar = tqdm(
                total=round(seconds), desc=str(name or Path(path).name)[-30:], unit="s", leave=False, disable=None
            )
            blocks = _counted(blocks, bar, self.frontend.sample_rate)
        try:
            result = self.run_stream(blocks, str(name or Path(path).name), keep_scores, plot_frames=frames)
        finally:
            if bar is not None:
                bar.close()
        result.file = str(path)
        return result

    # ------------------------------------------------------------------ many recordings
    def predict(
        self,
        inputs: Iterable[str | os.PathLike],
        output: str | os.PathLike,
        scores: bool = False,
        plot: bool = False,
        progress: bool = True,
    ) -> dict:
        """Every task on every recording of ``inputs`` (files, folders searched recursively, or
        manifests with a ``filename`` column); writes ``output``/<task>.tsv (frame tasks: DCASE
        detections; clip tasks: one row per file, and <task>_windows.tsv for longer recordings),
        ``scores/<task>/<name>.tsv`` with ``scores``, ``plots/<name>.png`` with ``plot`` and
        ``predict.json``. A recording that cannot be read is logged and listed as failed; the others
        go on. Returns the report (``failed``: how many failed)."""
        files = collect_inputs(inputs)
        out = fileio.ensure_writable(output)
        started = time.monotonic()
        results, audio_seconds = [], 0.0
        bar = tqdm(files, desc="predict", unit="file", disable=None if progress else True)
        interrupted = True
        try:
            for path, name in bar:
                bar.set_postfix_str(name[-40:])
                try:
                    result = self.predict_file(path, name, keep_scores=scores, plot=plot, progress=progress)
                except (UserError, OSError) as exc:
                    message = str(exc) if isinstance(exc, UserError) else f"{path}: {exc.strerror or exc}"
                    log.error("%s (skipped)", message)
                    results.append(FileResult(str(path), name, 0.0, error=message))
                    continue
                audio_seconds += result.seconds
                if scores:
                    self._write_scores(out, result)
                if plot:
                    plot_result(result, self, out / "plots" / f"{_safe(name)}.png")
                result.scores, result.spectrogram = {}, None  # written: memory does not grow with the files
                results.append(result)
            interrupted = False
        finally:  # an interrupted command keeps the tables of the recordings it finished
            bar.close()
            elapsed = time.monotonic() - started
            self._write_tables(out, results)
            report = self._report(results, out, scores, plot, audio_seconds, elapsed)
            report["interrupted"] = interrupted
            report["files_given"] = len(files)
            fileio.write_json(out / REPORT, report)
        return report

    def _write_tables(self, out: Path, results: list[FileResult]) -> None:
        good = [r for r in results if r.error is None]
        for task in self.tasks:
            if task.level == "frame":
                rows = [
                    [r.name, f"{on:.3f}", f"{off:.3f}", label] for r in good for on, off, label in r.events[task.name]
                ]
                _write_tsv(out / f"{task.name}.tsv", ["filename", "onset", "offset", "event_label"], rows)
                continue
            rows = [[r.name, r.labels[task.name][0], *(f"{v:.4f}" for v in r.labels[task.name][1])] for r in good]
            _write_tsv(out / f"{task.name}.tsv", ["filename", "label", *task.classes], rows)
            if any(len(r.windows[task.name]) > 1 for r in good):
                rows = [
                    [r.name, f"{on:.3f}", f"{off:.3f}", label, *(f"{v:.4f}" for v in values)]
                    for r in good
                    for on, off, label, values in r.windows[task.name]
                ]
                _write_tsv(
                    out / f"{task.name}_windows.tsv", ["filename", "onset", "offset", "label", *task.classes], rows
                )

    def _write_scores(self, out: Path, result: FileResult) -> None:
        """sed_scores_eval's format: per recording, rows of ``onset offset <class scores>``."""
        for task in self.tasks:
            if task.level != "frame":
                continue
            values = result.scores[task.name]
            edges = np.minimum(np.arange(len(values) + 1) * self.model.frame_seconds, result.seconds)
            rows = [
                [f"{edges[i]:.3f}", f"{edges[i + 1]:.3f}", *(f"{v:.6f}" for v in row)] for i, row in enumerate(values)
            ]
            stem = str(Path(inside_name(result.name)).with_suffix(""))
            _write_tsv(out / "scores" / task.name / f"{stem}.tsv", ["onset", "offset", *task.classes], rows)

    def _report(self, results, out: Path, scores: bool, plot: bool, audio_seconds: float, elapsed: float) -> dict:
        failed = [r for r in results if r.error is not None]
        return {
            "keras_mtl_version": __version__,
            "model": str(self.model.path),
            "model_kind": self.model.kind,
            "model_description": self.model.description,
            "frontend": dataclasses.asdict(self.frontend),
            "tasks": {
                task.display: {
                    "name": task.name,
                    "level": task.level,
                    "classes": list(task.classes),
                    "clip_seconds": task.clip_seconds,
                    "output": f"{task.name}.tsv",
                    **(
                        {
                            "frame_seconds": self.model.frame_seconds,
                            "median_filter_frames": task.median_filter_frames,
                            "threshold": task.threshold,
                            **({"scores": f"scores/{task.name}/"} if scores else {}),
                        }
                        if task.level == "frame"
                        else {"hop_seconds": self.hop or task.clip_seconds}
                    ),
                }
                for task in self.tasks
            },
            "settings": {"hop": self.hop, "scores": scores, "plot": plot, "batch": self.batch},
            "files": [
                {
                    "file": r.file,
                    "name": r.name,
                    "status": "failed" if r.error else "ok",
                    **({"error": r.error} if r.error else {"seconds": round(r.seconds, 3)}),
                    **({"labels": {t: lab for t, (lab, _) in r.labels.items()}} if not r.error else {}),
                    **({"events": {t: len(e) for t, e in r.events.items()}} if not r.error else {}),
                }
                for r in results
            ],
            "files_total": len(results),
            "failed": len(failed),
            "audio_seconds": round(audio_seconds, 3),
            "processing_seconds": round(elapsed, 3),
            "real_time_factor": round(audio_seconds / elapsed, 1) if elapsed > 0 else None,
            "output_dir": str(out),
        }

    # ------------------------------------------------------------------ the microphone
    def live(
        self, blocks: Iterable[np.ndarray], write: Callable[[str], None] | None = None, seconds: float | None = None
    ) -> FileResult:
        """Every task on a live stream (``microphone_blocks``, or any iterable of float32 mono blocks at
        the front end's sample rate), writing each finding as it comes: a line per clip-task window
        and per frame-task event. ``seconds``: stop after that much audio."""
        limit = None if seconds is None else int(seconds * self.frontend.sample_rate)
        write = write or log.info

        def bounded():
            taken = 0
            for block in blocks:
                if limit is not None and taken + len(block) >= limit:
                    yield block[: limit - taken]
                    return
                taken += len(block)
                yield block

        def window(task, row):
            onset, offset, label, scores = row
            write(f"{onset:.2f}-{offset:.2f} s  {task.display}: {label} ({float(np.max(scores)):.2f})")

        def event(task, found):
            onset, offset, label = found
            write(f"{onset:.2f}-{offset:.2f} s  {task.display}: {label}")

        return self.run_stream(bounded(), "live", on_window=window, on_event=event, immediate=True)


def _counted(blocks: Iterable[np.ndarray], bar, sample_rate: int) -> Iterator[np.ndarray]:
    for block in blocks:
        bar.update(round(len(block) / sample_rate))
        yield block


def microphone_blocks(sample_rate: int, block_seconds: float = 0.5, device=None) -> Iterator[np.ndarray]:
    """float32 mono blocks from the default input device (or ``device``) at ``sample_rate``, through
    the sounddevice package (PortAudio). DataError, at the call, when PortAudio or an input device is
    missing."""
    try:
        import sounddevice  # optional: PortAudio is a system library that a server may not have
    except (ImportError, OSError) as exc:
        raise DataError(
            f"no audio input: {exc} (install the PortAudio library, e.g. apt-get install libportaudio2)"
        ) from None
    try:
        sounddevice.check_input_settings(device=device, channels=1, samplerate=sample_rate, dtype="float32")
    except (sounddevice.PortAudioError, ValueError) as exc:
        raise DataError(f"no audio input device: {exc}") from None
    return _input_stream(sounddevice, sample_rate, block_seconds, device)


def _input_stream(sounddevice, sample_rate: int, block_seconds: float, device) -> Iterator[np.ndarray]:
    blocks: queue.Queue = queue.Queue()

    def callback(indata, frames, when, status):
        if status:
            log.warning("microphone: %s", status)
        blocks.put(indata[:, 0].copy())

    with sounddevice.InputStream(
        samplerate=sample_rate,
        channels=1,
        dtype="float32",
        blocksize=int(block_seconds * sample_rate),
        device=device,
        callback=callback,
    ):
        while True:
            yield blocks.get()


# -------------------------------------------------------------------------------------- inputs
def collect_inputs(inputs: Iterable[str | os.PathLike]) -> list[tuple[Path, str]]:
    """(path, name) of every recording: a file as given (its name: the file name), a folder's audio
    files found recursively (names relative to the folder), a manifest's (.csv/.tsv) ``filename``
    column (relative to the manifest). ConfigError for a path that does not exist, a manifest without
    a ``filename`` column, or no recording at all."""
    found: list[tuple[Path, str]] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            audio = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in audio_extensions())
            found.extend((p, p.relative_to(path).as_posix()) for p in audio)
        elif path.suffix.lower() in (".csv", ".tsv"):
            found.extend(_manifest(path))
        elif path.exists():
            found.append((path, path.name))
        else:
            raise ConfigError(f"{path}: no such file or folder")
    seen: set[str] = set()
    for index, (path, name) in enumerate(found):  # two recordings with one name: the later one by its path
        if name in seen:
            found[index] = (path, str(path))
        seen.add(found[index][1])
    if not found:
        raise ConfigError(
            f"no recording in {', '.join(map(str, inputs))} (audio: {', '.join(sorted(audio_extensions()))})"
        )
    return found


def audio_extensions() -> set[str]:
    """File endings soundfile reads (libsndfile's formats, MP3 and Opus included)."""
    return {f".{name.lower()}" for name in soundfile.available_formats()} | {".mp3", ".opus", ".oga", ".wave", ".aif"}


def _manifest(path: Path) -> list[tuple[Path, str]]:
    try:
        return _manifest_rows(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: not a readable manifest ({type(exc).__name__}: {exc})") from None


def _manifest_rows(path: Path) -> list[tuple[Path, str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if "filename" not in (reader.fieldnames or []):
            raise ConfigError(
                f"{path}:1: a manifest needs a 'filename' column (found: {', '.join(reader.fieldnames or [])})"
            )
        names = list(dict.fromkeys(row["filename"] for row in reader if row.get("filename")))
    return [(Path(name) if Path(name).is_absolute() else path.parent / name, name) for name in names]


def _write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    with fileio.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)


def inside_name(name: str) -> str:
    """``name`` as a path inside an output folder: relative names as they are, an absolute name or one
    that climbs out (``..``) flattened into one file name."""
    path = Path(name)
    return _safe(name.lstrip("/\\")) if path.is_absolute() or ".." in path.parts else name


def _safe(name: str) -> str:
    return name.replace("/", "__").replace("\\", "__")


# ---------------------------------------------------------------------------------------- plots
class _Spectrogram:
    """A recording's log-mel, averaged over time down to at most PLOT_COLUMNS columns."""

    def __init__(self, frames: int):
        self.factor = max(1, -(-frames // PLOT_COLUMNS))
        self.columns: list[np.ndarray] = []
        self.carry: np.ndarray | None = None

    def add(self, features: np.ndarray, covered: int, frontend: FrontEndConfig, spec: stream.WindowSpec) -> None:
        # each window up to where the next one starts; a last, padded window up to the recording's end
        span = covered if covered < spec.length else min(covered, spec.step)
        keep = min(len(features), -(-span // frontend.hop_length))
        part = features[:keep] if self.carry is None else np.concatenate([self.carry, features[:keep]])
        whole = len(part) // self.factor * self.factor
        if whole:
            self.columns.append(part[:whole].reshape(-1, self.factor, part.shape[1]).mean(axis=1))
        self.carry = part[whole:]

    def image(self) -> tuple[np.ndarray, int]:
        columns = self.columns + (
            [self.carry.mean(axis=0, keepdims=True)] if self.carry is not None and len(self.carry) else []
        )
        return np.concatenate(columns), self.factor


def plot_result(result: FileResult, predictor: Predictor, path: Path) -> None:
    """One PNG: the log-mel spectrogram, each frame task's scores (kept with --scores) and detected
    events on the same time axis, and each clip task's window labels along it."""
    plt = reporting.pyplot()
    frame_tasks = [t for t in predictor.tasks if t.level == "frame"]
    clip_tasks = [t for t in predictor.tasks if t.level == "clip"]
    rows = 1 + len(frame_tasks) + (1 if clip_tasks else 0)
    fig, axes = plt.subplots(rows, 1, figsize=(12, 2.2 + 1.8 * rows), sharex=True, squeeze=False)
    axes = axes[:, 0]
    duration = result.seconds
    image, factor = result.spectrogram or (None, 1)
    if image is not None:
        step = predictor.frontend.frame_seconds * factor
        axes[0].imshow(
            image.T, origin="lower", aspect="auto", extent=(0, len(image) * step, 0, image.shape[1]), cmap="magma"
        )
    axes[0].set_ylabel("mel band")
    axes[0].set_title(f"{result.name}: log-mel ({duration:.1f} s)")
    colors = plt.get_cmap("tab10")
    for ax, task in zip(axes[1:], frame_tasks):
        classes = list(task.classes)
        if task.name in result.scores:
            values = result.scores[task.name]
            times = np.arange(len(values)) * predictor.model.frame_seconds
            for c in range(len(classes)):
                ax.plot(times, values[:, c] * 0.8 + c, color=colors(c % 10), linewidth=0.6)
        for onset, offset, label in result.events.get(task.name, []):
            c = classes.index(label)
            ax.broken_barh([(onset, offset - onset)], (c + 0.05, 0.8), facecolors=colors(c % 10), alpha=0.45)
        ax.set_yticks(np.arange(len(classes)) + 0.45, classes, fontsize=7)
        ax.set_ylim(0, len(classes))
        ax.set_title(
            f"{task.display}: events (threshold {task.threshold}, median filter {task.median_filter_frames})",
            fontsize=9,
        )
    if clip_tasks:
        ax = axes[-1]
        for row, task in enumerate(clip_tasks):
            for onset, offset, label, scores in result.windows.get(task.name, []):
                c = list(task.classes).index(label)
                ax.broken_barh([(onset, offset - onset)], (row + 0.1, 0.8), facecolors=colors(c % 10), alpha=0.5)
                ax.text(
                    (onset + offset) / 2,
                    row + 0.5,
                    f"{label} {float(np.max(scores)):.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    clip_on=True,
                )
        ax.set_yticks(np.arange(len(clip_tasks)) + 0.5, [t.display for t in clip_tasks], fontsize=8)
        ax.set_ylim(0, len(clip_tasks))
        ax.set_title("clip tasks: label per window", fontsize=9)
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0, max(duration, 1e-3))
    reporting.save_figure(fig, path)
