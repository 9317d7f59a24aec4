"""What a dataset split is made of: audio items with clip labels, weak tags or strong events."""

from __future__ import annotations

import dataclasses
from pathlib import Path


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
    ``duration``: the annotated duration in seconds, when the metadata gives it.
    """

    path: Path
    key: str
    label: str | None = None
    events: tuple[Event, ...] | None = None
    tags: tuple[str, ...] | None = None
    duration: float | None = None


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
