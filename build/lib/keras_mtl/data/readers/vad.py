"""Voice activity detection data read from strong labels with a ``speech`` class.

Layout (written by keras_mtl.data.synth.vad_mix.build_vad_set; users with real annotations write
the same files):

    <root>/audio/train/*.wav, <root>/audio/test/*.wav
    <root>/metadata/train.tsv, test.tsv                   filename onset offset event_label (speech)
    <root>/metadata/train_durations.tsv, test_durations.tsv   filename duration
"""

from __future__ import annotations

from pathlib import Path

from keras_mtl.core.errors import DataError
from keras_mtl.data.items import AudioItem
from keras_mtl.data.readers.desed import read_strong_tsv
from keras_mtl.data.readers.tables import parse_float, read_table

CLASSES = ("speech",)


SPLITS = ("train", "test")


def looks_like_vad(root: Path) -> bool:
    return (root / "metadata" / "train.tsv").is_file() and (root / "audio" / "train").is_dir()


def read_vad(root: str | Path, split: str, classes=CLASSES) -> list[AudioItem]:
    root = Path(root)
    if split not in SPLITS:
        raise DataError(f"VAD has no split {split!r} (known: {', '.join(SPLITS)})")
    if not (root / "audio" / split).is_dir():
        raise DataError(f"{root}: not a VAD folder (audio/{split} is missing)")
    tsv = root / "metadata" / f"{split}.tsv"
    events = read_strong_tsv(tsv, classes)
    durations_path = root / "metadata" / f"{split}_durations.tsv"
    durations = {
        r.get("filename"): parse_float(r, "duration", durations_path)
        for r in read_table(durations_path, required=("filename", "duration"))
    }
    items = []
    for name in sorted(set(events) | set(durations)):
        path = root / "audio" / split / name
        if not path.is_file():
            raise DataError(f"{tsv}: audio file {path} not found")
        found = events.get(name, ())
        items.append(
            AudioItem(
                path=path,
                key=name,
                events=found,
                tags=tuple(sorted({e.label for e in found})),
                duration=durations.get(name),
            )
        )
    if not items:
        raise DataError(f"{tsv}: no clips")
    return items
