"""Reader for the TAU Urban Acoustic Scenes 2022 Mobile development layout.

<root>/meta.csv                          filename, scene_label, identifier, source_label (tab)
<root>/audio/<scene>-<city>-<loc>-<segment>-<device>.wav
<root>/evaluation_setup/fold1_train.csv  filename, scene_label (tab)
<root>/evaluation_setup/fold1_evaluate.csv
"""

from __future__ import annotations

from pathlib import Path

from keras_mtl.core.errors import DataError
from keras_mtl.data.items import AudioItem
from keras_mtl.data.readers.tables import read_table

SCENES = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)

SPLIT_FILES = {
    "train": "evaluation_setup/fold1_train.csv",
    "test": "evaluation_setup/fold1_evaluate.csv",
}


def looks_like_tau22(root: Path) -> bool:
    return (root / "meta.csv").is_file() and (root / "evaluation_setup").is_dir()


def scene_labels(root: str | Path) -> tuple[str, ...]:
    """The scene labels of a TAU-layout folder's train and test setup files, sorted (e.g. the 15 of
    TUT Acoustic Scenes 2017)."""
    root = Path(root)
    labels = set()
    for name in SPLIT_FILES.values():
        labels.update(row.get("scene_label") for row in read_table(root / name, required=("filename", "scene_label")))
    labels.discard("")
    return tuple(sorted(labels))


def read_tau22(root: str | Path, split: str, classes=SCENES) -> list[AudioItem]:
    """Items of one split ('train' = fold1_train, 'test' = fold1_evaluate); ``classes`` None: any label."""
    root = Path(root)
    if split not in SPLIT_FILES:
        raise DataError(f"TAU22 has no split {split!r} (known: {', '.join(SPLIT_FILES)})")
    if not root.is_dir():
        raise DataError(f"{root}: TAU22 folder not found")
    if not (root / "meta.csv").is_file():
        raise DataError(f"{root}: not a TAU22 folder (meta.csv is missing)")
    setup = root / SPLIT_FILES[split]
    known = set(classes) if classes is not None else None
    items = []
    for row in read_table(setup, required=("filename", "scene_label")):
        filename, label = row.get("filename"), row.get("scene_label")
        if not filename:
            raise DataError(f"{setup}:{row.line}: empty filename")
        if not label:
            raise DataError(f"{setup}:{row.line}: empty scene_label")
        if known is not None and label not in known:
            raise DataError(
                f"{setup}:{row.line}: unknown scene label {label!r} (known: {', '.join(classes)}); to train on "
                f"this folder's own labels, define a task over it: --task NAME=tau22:{root}"
            )
        path = root / filename
        if not path.is_file():
            raise DataError(f"{setup}:{row.line}: audio file {path} not found")
        items.append(AudioItem(path=path, key=filename, label=label))
    if not items:
        raise DataError(f"{setup}: no clips listed")
    return items
