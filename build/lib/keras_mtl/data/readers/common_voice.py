"""Reader for the Mozilla Common Voice layout (speaker gender and age group tasks).

    <root>/clips/*.mp3
    <root>/train.tsv, dev.tsv, test.tsv     columns include path, gender, age

Gender: female / male (Common Voice 17+ spells them female_feminine / male_masculine; other
values are dropped). Age groups as in seed 001: under 30 (teens, twenties), 30-60 (thirties,
fourties, fifties), over 60 (sixties and older). Rows without the needed label are dropped
and counted in a log line. mp3 is decoded by soundfile (libsndfile >= 1.1).
"""

from __future__ import annotations

import logging
from pathlib import Path

from keras_mtl.core.errors import DataError
from keras_mtl.data.items import AudioItem
from keras_mtl.data.readers import tables

log = logging.getLogger(__name__)

GENDERS = ("female", "male")
AGE_GROUPS = ("under_30", "30_60", "over_60")
GENDER_VALUES = {"female": "female", "female_feminine": "female", "male": "male", "male_masculine": "male"}
AGE_VALUES = {
    "teens": "under_30",
    "twenties": "under_30",
    "thirties": "30_60",
    "fourties": "30_60",
    "forties": "30_60",
    "fifties": "30_60",
    "sixties": "over_60",
    "seventies": "over_60",
    "eighties": "over_60",
    "nineties": "over_60",
}
SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
LABEL_COLUMNS = {"gender": GENDER_VALUES, "age": AGE_VALUES}


def looks_like_common_voice(root: Path) -> bool:
    return (root / "clips").is_dir() and (root / "train.tsv").is_file()


def read_common_voice(root: str | Path, split: str, column: str) -> list[AudioItem]:
    """Items of one split labelled by ``column`` ('gender' or 'age', regrouped)."""
    root = Path(root)
    if column not in LABEL_COLUMNS:
        raise DataError(f"Common Voice label column must be one of {', '.join(LABEL_COLUMNS)}, not {column!r}")
    if split not in SPLIT_FILES:
        raise DataError(f"Common Voice has no split {split!r} (known: {', '.join(SPLIT_FILES)})")
    if not (root / "clips").is_dir():
        raise DataError(f"{root}: not a Common Voice folder (clips/ is missing)")
    tsv = root / SPLIT_FILES[split]
    mapping = LABEL_COLUMNS[column]
    items, dropped = [], 0
    for row in tables.read_table(tsv, required=("path", column), fmt=tables.COMMON_VOICE):
        label = mapping.get(row.get(column).lower())
        if label is None:
            dropped += 1
            continue
        path = root / "clips" / row.get("path")
        if not path.is_file():
            raise DataError(f"{tsv}:{row.line}: audio file {path} not found")
        items.append(AudioItem(path=path, key=row.get("path"), label=label))
    if dropped:
        log.info("%s: dropped %d row(s) without a usable %s label", tsv, dropped, column)
    if not items:
        raise DataError(f"{tsv}: no rows with a usable {column} label")
    return items
