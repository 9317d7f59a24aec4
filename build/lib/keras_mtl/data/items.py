"""What a dataset split is made of: audio items with clip labels, weak tags or strong events."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from keras_mtl.core.errors import DataError


@dataclasses.dataclass(frozen=True)
class Event:
    onset: float
    offset: float
    label: str


@dataclasses.dataclass(frozen=True)
class AudioItem:
    """One audio file and what is known about it.

    ``label``: the clip's single class (clip tasks). ``events``: strong labels (frame tasks);
    None when the clip is not strongly labelled. ``tags``: weak (clip-level) labels.
    ``duration``: the annotated duration in seconds, when the metadata gives it. ``offset``: where in
    the file the item starts, in seconds (a window of a longer recording, see ``windows_of``).
    """

    path: Path
    key: str
    label: str | None = None
    events: tuple[Event, ...] | None = None
    tags: tuple[str, ...] | None = None
    duration: float | None = None
    offset: float = 0.0


def check_event_inside(event: Event, duration: float, where: str, recording: str) -> None:
    """DataError (naming ``where``, e.g. ``file:line``) for an event that starts at or after the end
    of its ``duration``-second recording, or ends far past it (more than 1 s and half its length):
    times in milliseconds or samples, not seconds. Events that run a little past the end (as in
    DESED) are kept; the frame targets cut them at the end."""
    late = event.onset >= duration - 1e-6
    long = event.offset > duration + max(1.0, 0.5 * duration)
    if late or long:
        what = "starts after the end" if late else "ends long after the end"
        raise DataError(
            f"{where}: event {event.label!r} {event.onset:g}-{event.offset:g} s {what} of {recording} "
            f"({duration:.2f} s); are the times in milliseconds or samples? (DCASE tables give seconds)"
        )


def merge_overlapping(events) -> tuple[Event, ...]:
    """Events sorted by (onset, label), same-class events that overlap or touch merged into one.

    sed_scores_eval (PSDS) rejects overlapping or connected events of one class in one clip, and
    they mean the same frame targets; DESED validation files of some releases contain them.
    """
    merged: dict[str, list[Event]] = {}
    for event in sorted(events, key=lambda e: (e.label, e.onset, e.offset)):
        runs = merged.setdefault(event.label, [])
        if runs and event.onset <= runs[-1].offset:
            last = runs[-1]
            runs[-1] = Event(last.onset, max(last.offset, event.offset), last.label)
        else:
            runs.append(event)
    return tuple(sorted((e for runs in merged.values() for e in runs), key=lambda e: (e.onset, e.label)))


def windows_of(item: AudioItem, seconds: float, duration: float) -> list[AudioItem]:
    """A strongly labelled recording of ``duration`` seconds as consecutive windows of ``seconds``
    (the last one shorter, padded when its features are computed), each with the events inside it
    shifted to the window's start and cut at its edges. One window (the item itself, with its
    duration) when the recording is no longer than ``seconds`` (+ 10 ms)."""
    if duration <= seconds + 0.01:
        return [dataclasses.replace(item, duration=item.duration or duration)]
    windows = []
    count = math.ceil((duration - 0.01) / seconds)
    for index in range(count):
        start = index * seconds
        length = min(seconds, duration - start)
        inside = tuple(
            Event(max(e.onset - start, 0.0), min(e.offset - start, length), e.label)
            for e in item.events or ()
            if e.offset > start
            and e.onset < start + length
            and min(e.offset - start, length) > max(e.onset - start, 0.0)
        )
        windows.append(
            dataclasses.replace(
                item,
                key=f"{item.key}@{start:g}s",
                events=inside if item.events is not None else None,
                tags=tuple(sorted({e.label for e in inside})) if item.events is not None else item.tags,
                duration=length,
                offset=item.offset + start,
            )
        )
    return windows
