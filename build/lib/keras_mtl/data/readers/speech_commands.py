"""Reader for the Google Speech Commands v2 layout.

    <root>/<word>/<speaker>_nohash_<n>.wav     one folder per word (35 words in v2)
    <root>/validation_list.txt                 relative paths of the validation clips
    <root>/testing_list.txt                    relative paths of the test clips
    <root>/_background_noise_/*.wav            long noise recordings (not a class)

Train is every clip of a known word listed in neither file.
"""

from __future__ import annotations

from pathlib import Path

from keras_mtl.core.errors import DataError
from keras_mtl.data.items import AudioItem

WORDS = (
    "backward",
    "bed",
    "bird",
    "cat",
    "dog",
    "down",
    "eight",
    "five",
    "follow",
    "forward",
    "four",
    "go",
    "happy",
    "house",
    "learn",
    "left",
    "marvin",
    "nine",
    "no",
    "off",
    "on",
    "one",
    "right",
    "seven",
    "sheila",
    "six",
    "stop",
    "three",
    "tree",
    "two",
    "up",
    "visual",
    "wow",
    "yes",
    "zero",
)
SPLIT_LISTS = {"validation": "validation_list.txt", "test": "testing_list.txt"}


def looks_like_speech_commands(root: Path) -> bool:
    return (root / "testing_list.txt").is_file() and (root / "validation_list.txt").is_file()


def _read_list(root: Path, name: str) -> list[str]:
    path = root / name
    if not path.is_file():
        raise DataError(f"{root}: not a Speech Commands folder ({name} is missing)")
    entries = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry:
            continue
        if "/" not in entry:
            raise DataError(f"{path}:{line_no}: expected <word>/<file>.wav, got {entry!r}")
        entries.append(entry)
    return entries


def words_in(root: str | Path) -> tuple[str, ...]:
    """The words of a Speech Commands-layout folder: its subfolders holding .wav files, sorted (30 in v1,
    35 in v2); ``_background_noise_`` is not a word."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: Speech Commands folder not found")
    return tuple(
        sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")) and any(p.glob("*.wav"))
        )
    )


def read_speech_commands(root: str | Path, split: str, classes=WORDS) -> list[AudioItem]:
    """Items of 'train', 'validation' or 'test'; words outside ``classes`` are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: Speech Commands folder not found")
    if split not in ("train", "validation", "test"):
        raise DataError(f"Speech Commands has no split {split!r} (known: train, validation, test)")
    lists = {name: _read_list(root, file) for name, file in SPLIT_LISTS.items()}
    known = set(classes if classes is not None else words_in(root))
    if split in lists:
        entries = lists[split]
        for entry in entries:
            if not (root / entry).is_file():
                raise DataError(f"{root / SPLIT_LISTS[split]}: listed clip {root / entry} not found")
    else:
        held_out = set(lists["validation"]) | set(lists["test"])
        entries = sorted(
            p.relative_to(root).as_posix()
            for word in sorted(known)
            if (root / word).is_dir()
            for p in (root / word).glob("*.wav")
            if p.relative_to(root).as_posix() not in held_out
        )
    items = [AudioItem(path=root / e, key=e, label=e.split("/")[0]) for e in entries if e.split("/")[0] in known]
    if not items:
        raise DataError(f"{root}: no clips of the known words in split {split!r}")
    return items


def background_noises(root: str | Path) -> list[Path]:
    folder = Path(root) / "_background_noise_"
    return sorted(folder.glob("*.wav")) if folder.is_dir() else []
