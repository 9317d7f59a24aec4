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
