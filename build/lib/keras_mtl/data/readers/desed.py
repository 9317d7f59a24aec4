"""Reader for the DESED layout of the DCASE task 4 baseline.

<root>/audio/train/synthetic21_train/soundscapes_16k/*.wav   strong, synthetic
<root>/metadata/train/synthetic21_train/soundscapes.tsv      filename onset offset event_label
<root>/audio/train/weak_16k/*.wav                            weak
<root>/metadata/train/weak.tsv                               filename event_labels (comma list)
<root>/audio/train/unlabel_in_domain_16k/*.wav               unlabelled
<root>/audio/train/strong_label_real_16k/*.wav               strong, real (DCASE 2022; optional)
<root>/metadata/train/audioset_strong.tsv                    filename onset offset event_label
<root>/audio/validation/validation_16k/*.wav                 strong, used as test set
<root>/metadata/validation/validation.tsv
<root>/metadata/validation/validation_durations.tsv          filename duration
"""

from __future__ import annotations

import logging
from pathlib import Path

from keras_mtl.core.errors import DataError
from keras_mtl.data.items import AudioItem, Event, merge_overlapping
from keras_mtl.data.readers.tables import iter_audio_files, parse_float, read_table

log = logging.getLogger(__name__)

CLASSES = (
    "Alarm_bell_ringing",
    "Blender",
    "Cat",
    "Dishes",
    "Dog",
    "Electric_shaver_toothbrush",
    "Frying",
    "Running_water",
    "Speech",
    "Vacuum_cleaner",
)

# split -> (kind, audio folder, metadata tsv, durations tsv)
LAYOUT = {
    "synthetic_train": (
        "strong",
        "audio/train/synthetic21_train/soundscapes_16k",
        "metadata/train/synthetic21_train/soundscapes.tsv",
        None,
    ),
    "weak": ("weak", "audio/train/weak_16k", "metadata/train/weak.tsv", None),
    "unlabeled": ("unlabeled", "audio/train/unlabel_in_domain_16k", None, None),
    "strong_real": ("strong", "audio/train/strong_label_real_16k", "metadata/train/audioset_strong.tsv", None),
    "validation": (
        "strong",
        "audio/validation/validation_16k",
        "metadata/validation/validation.tsv",
        "metadata/validation/validation_durations.tsv",
    ),
}


def looks_like_desed(root: Path) -> bool:
    return (root / "audio").is_dir() and (root / "metadata").is_dir()


def has_split(root: Path, split: str) -> bool:
    """Whether ``root`` holds the audio folder of ``split`` (weak, unlabelled and strong real sets are optional)."""
    return split in LAYOUT and (Path(root) / LAYOUT[split][1]).is_dir()


def event_labels(root: str | Path) -> tuple[str, ...]:
    """The event labels of a DESED-layout folder's strong and weak metadata, sorted (another domain's
    event set, or a later DCASE task 4 edition)."""
    root = Path(root)
    labels = set()
    for kind, audio_dir, tsv, _ in LAYOUT.values():
        if tsv is None or not (root / audio_dir).is_dir() or not (root / tsv).is_file():
            continue
        if kind == "weak":
            for row in read_table(root / tsv, required=("filename", "event_labels")):
                labels.update(t.strip() for t in row.get("event_labels").split(",") if t.strip())
        else:
            labels.update(e.label for events in read_strong_tsv(root / tsv, None).values() for e in events)
    return tuple(sorted(labels))


def read_desed(root: str | Path, split: str, classes=CLASSES) -> list[AudioItem]:
    """Items of one split: 'synthetic_train', 'weak', 'unlabeled', 'strong_real' or 'validation';
    ``classes`` None: any label."""
    root = Path(root)
    if split not in LAYOUT:
        raise DataError(f"DESED has no split {split!r} (known: {', '.join(LAYOUT)})")
    if not root.is_dir():
        raise DataError(f"{root}: DESED folder not found")
    kind, audio_dir, tsv, durations_tsv = LAYOUT[split]
    audio_dir = root / audio_dir
    if not audio_dir.is_dir():
        raise DataError(f"{root}: not a DESED folder ({audio_dir.relative_to(root)} is missing)")
    if kind == "unlabeled":
        items = [AudioItem(path=p, key=p.name) for p in iter_audio_files(audio_dir)]
    elif kind == "weak":
        items = _read_weak(root / tsv, audio_dir, classes)
    else:
        durations = _read_durations(root / durations_tsv) if durations_tsv else None
        items = _read_strong(root / tsv, audio_dir, classes, durations)
    if not items:
        raise DataError(f"{audio_dir}: no clips in DESED split {split!r}")
    return items


def read_strong_tsv(path: Path, classes=CLASSES) -> dict[str, tuple[Event, ...]]:
    """filename -> events (sorted; same-class overlaps merged, counted in a log line); a row with an
    empty onset/offset/label lists a clip with no event. ``classes`` None: any label."""
    events: dict[str, list[Event]] = {}
    for row in read_table(path, required=("filename", "onset", "offset", "event_label")):
        filename = row.get("filename")
        if not filename:
            raise DataError(f"{path}:{row.line}: empty filename")
        event = parse_event(row, path, classes)
        events.setdefault(filename, [])
        if event is not None:
            events[filename].append(event)
    return merge_strong_labels(events, path)


def merge_strong_labels(events: dict[str, list[Event]], path: Path) -> dict[str, tuple[Event, ...]]:
    """Every clip's events with same-class overlaps merged (``merge_overlapping``), counted in one log line."""
    out, merged = {}, 0
    for name, found in events.items():
        out[name] = merge_overlapping(found)
        merged += len(found) - len(out[name])
    if merged:
        log.warning("%s: merged %d overlapping same-class event(s) into their neighbours", path, merged)
    return out


def parse_event(row, path: Path, classes=None) -> Event | None:
    """The event of a strong-label row; None for a row that lists a clip without events.
    ``classes``: the allowed labels (None: any non-empty label)."""
    label = row.get("event_label")
    if not label and not row.get("onset") and not row.get("offset"):
        return None
    if classes is not None and label not in classes:
        raise DataError(
            f"{path}:{row.line}: unknown event label {label!r} (known: {', '.join(classes)}); to train on these "
            "labels, define a task over the folder: --task NAME=desed:DIR (a frame manifest: NAME=frame:FILE)"
        )
    if not label:
        raise DataError(f"{path}:{row.line}: empty event_label")
    onset, offset = parse_float(row, "onset", path), parse_float(row, "offset", path)
    if onset < 0:
        raise DataError(f"{path}:{row.line}: negative onset {onset}")
    if onset > offset:
        raise DataError(f"{path}:{row.line}: onset {onset} is after offset {offset}")
    if onset == offset:
        raise DataError(f"{path}:{row.line}: onset equals offset ({onset}): a zero-length event")
    return Event(onset, offset, label)


def _read_strong(tsv: Path, audio_dir: Path, classes, durations: dict[str, float] | None) -> list[AudioItem]:
    events = read_strong_tsv(tsv, classes)
    names = list(durations) if durations is not None else sorted(events)
    items = []
    for name in names:
        path = audio_dir / name
        if not path.is_file():
            raise DataError(f"{tsv}: audio file {path} not found")
        items.append(
            AudioItem(
                path=path,
                key=name,
                events=events.get(name, ()),
                tags=tuple(sorted({e.label for e in events.get(name, [])})),
                duration=durations.get(name) if durations else None,
            )
        )
    if durations is not None:
        for name in events:
            if name not in durations:
                raise DataError(f"{tsv}: {name} has events but no entry in the durations file")
    return items


def _read_weak(tsv: Path, audio_dir: Path, classes) -> list[AudioItem]:
    known = set(classes) if classes is not None else None
    items = []
    for row in read_table(tsv, required=("filename", "event_labels")):
        name = row.get("filename")
        tags = tuple(t.strip() for t in row.get("event_labels").split(",") if t.strip())
        for tag in tags:
            if known is not None and tag not in known:
                raise DataError(
                    f"{tsv}:{row.line}: unknown event label {tag!r} (known: {', '.join(classes)}); to train on "
                    "these labels, define a task over the folder: --task NAME=desed:DIR"
                )
        path = audio_dir / name
        if not path.is_file():
            raise DataError(f"{tsv}:{row.line}: audio file {path} not found")
        items.append(AudioItem(path=path, key=name, tags=tags))
    return items


def _read_durations(path: Path) -> dict[str, float]:
    durations = {}
    for row in read_table(path, required=("filename", "duration")):
        value = parse_float(row, "duration", path)
        if value <= 0:
            raise DataError(f"{path}:{row.line}: duration {value} is not positive")
        durations[row.get("filename")] = value
    return durations
