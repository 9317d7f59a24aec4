"""User-defined tasks from a manifest file, no code.

Clip level: a CSV/TSV with columns ``filename,label`` and optionally ``split``.
Frame level: a DESED-style strong-label TSV ``filename,onset,offset,event_label`` and
optionally ``split``; a row with empty onset/offset/label lists a clip without events.

Filenames are relative to the manifest's folder (or absolute). ``split`` is ``train`` or
``test``; without the column every clip is assigned by a hash of its filename (20% test),
so the split is stable across runs and machines.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from pathlib import Path

from keras_mtl.core import fileio
from keras_mtl.core.errors import DataError
from keras_mtl.data.audio import audio_seconds
from keras_mtl.data.items import AudioItem, Event, check_event_inside
from keras_mtl.data.readers.desed import merge_strong_labels, parse_event
from keras_mtl.data.readers.tables import MANIFEST, iter_audio_files, read_table

SPLITS = ("train", "test")
TEST_SHARE = 0.2
MAX_CLIP_SECONDS = 10.0


def _split_of(row, path: Path, filename: str) -> str:
    value = row.get("split").lower()
    if not value:
        digest = int(hashlib.sha1(filename.encode()).hexdigest()[:8], 16)
        return "test" if digest / 0xFFFFFFFF < TEST_SHARE else "train"
    if value in ("val", "validation", "eval", "evaluate"):
        value = "test"
    if value not in SPLITS:
        raise DataError(f"{path}:{row.line}: unknown split {value!r} (use train or test)")
    return value


def _audio_path(manifest: Path, row, filename: str) -> Path:
    if not filename:
        raise DataError(f"{manifest}:{row.line}: empty filename")
    path = Path(filename)
    path = path if path.is_absolute() else manifest.parent / path
    if not path.is_file():
        raise DataError(f"{manifest}:{row.line}: audio file {path} not found")
    return path


def read_clip_manifest(manifest: str | Path) -> dict[str, list[AudioItem]]:
    """split -> items of a clip-level manifest."""
    manifest = Path(manifest)
    out: dict[str, list[AudioItem]] = {s: [] for s in SPLITS}
    for row in read_table(manifest, required=("filename", "label"), fmt=MANIFEST):
        filename, label = row.get("filename"), row.get("label")
        if not label:
            raise DataError(f"{manifest}:{row.line}: empty label")
        path = _audio_path(manifest, row, filename)
        out[_split_of(row, manifest, filename)].append(AudioItem(path=path, key=filename, label=label))
    return out


def read_frame_manifest(manifest: str | Path) -> dict[str, list[AudioItem]]:
    """split -> strongly labelled items of a frame-level manifest (durations read from the files;
    same-class overlapping events merged)."""
    manifest = Path(manifest)
    events: dict[str, list[Event]] = defaultdict(list)
    info: dict[str, tuple[Path, str]] = {}
    durations: dict[str, float] = {}
    for row in read_table(manifest, required=("filename", "onset", "offset", "event_label"), fmt=MANIFEST):
        filename = row.get("filename")
        if filename not in info:
            info[filename] = (_audio_path(manifest, row, filename), _split_of(row, manifest, filename))
            durations[filename] = audio_seconds(info[filename][0])
        event = parse_event(row, manifest)
        if event is not None:
            check_event_inside(event, durations[filename], f"{manifest}:{row.line}", filename)
            events[filename].append(event)
    merged = merge_strong_labels(events, manifest)
    out: dict[str, list[AudioItem]] = {s: [] for s in SPLITS}
    for filename, (path, split) in info.items():
        found = merged.get(filename, ())
        out[split].append(
            AudioItem(
                path=path,
                key=filename,
                events=found,
                tags=tuple(sorted({e.label for e in found})),
                duration=durations[filename],
            )
        )
    return out


def manifest_classes(items: dict[str, list[AudioItem]], level: str) -> tuple[str, ...]:
    if level == "clip":
        labels = {item.label for split in items.values() for item in split}
    else:
        labels = {e.label for split in items.values() for item in split for e in item.events or ()}
    return tuple(sorted(labels))


def clip_seconds_for(items: dict[str, list[AudioItem]]) -> float:
    """The longest clip (to 0.1 s, at most 10 s): the length every clip is padded or cut to."""
    longest = max(audio_seconds(item.path) for split in items.values() for item in split)
    return min(MAX_CLIP_SECONDS, math.ceil(longest * 10 - 1e-6) / 10)


def build_clip_manifest(
    folder: str | Path, out: str | Path, label_pattern: str, test_pattern: str | None = None
) -> int:
    """Write a clip manifest for every audio file under ``folder``.

    ``label_pattern``: a regular expression whose first group, searched in the file's path
    relative to ``folder``, is the label. ``test_pattern``: files whose relative path matches
    it go to the test split, the others to train (without it, the hash split applies).
    Returns the number of rows; a file the label pattern does not match is an error.
    """
    import csv
    import io
    import os
    import re

    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    label_re = re.compile(label_pattern)
    test_re = re.compile(test_pattern) if test_pattern else None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["filename", "label", "split"] if test_re else ["filename", "label"])
    rows = 0
    for path in iter_audio_files(folder):
        relative = path.relative_to(folder).as_posix()
        match = label_re.search(relative)
        if not match or not match.groups():
            raise DataError(f"{path}: label pattern {label_pattern!r} does not match (it needs one group)")
        filename = os.path.relpath(path, out.parent.resolve()) if not path.is_absolute() else str(path)
        row = [filename, match.group(1)]
        if test_re:
            row.append("test" if test_re.search(relative) else "train")
        writer.writerow(row)
        rows += 1
    if not rows:
        raise DataError(f"{folder}: no audio files")
    fileio.write_text(out, buffer.getvalue())
    return rows
