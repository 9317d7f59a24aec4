"""Where each task's corpus lives under a data root, and reading its splits."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from keras_mtl.core.errors import DataError
from keras_mtl.data.items import AudioItem
from keras_mtl.data.readers import common_voice, desed, manifest, speech_commands, tau22, vad


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    subfolder: str  # its folder inside a combined data root (the synthetic layout)
    looks_like: Callable[[Path], bool]
    read: Callable[..., list[AudioItem]]
    synthetic: str | None = None  # which built-in set provides it: "sound" or "speech"
    has_split: Callable[[Path, str], bool] | None = None  # for corpora with optional splits


CORPORA = {
    "tau22": Corpus("tau22", "tau22", tau22.looks_like_tau22, tau22.read_tau22, "sound"),
    "desed": Corpus("desed", "desed", desed.looks_like_desed, desed.read_desed, "sound", desed.has_split),
    "speech_commands": Corpus(
        "speech_commands",
        "speech_commands",
        speech_commands.looks_like_speech_commands,
        speech_commands.read_speech_commands,
        "speech",
    ),
    "common_voice_gender": Corpus(
        "common_voice",
        "common_voice",
        common_voice.looks_like_common_voice,
        lambda root, split, classes: common_voice.read_common_voice(root, split, "gender"),
        "speech",
    ),
    "common_voice_age": Corpus(
        "common_voice",
        "common_voice",
        common_voice.looks_like_common_voice,
        lambda root, split, classes: common_voice.read_common_voice(root, split, "age"),
        "speech",
    ),
    "vad": Corpus("vad", "vad", vad.looks_like_vad, vad.read_vad, "speech"),
    "manifest_clip": Corpus(
        "manifest_clip",
        "",
        lambda root: root.is_file(),
        lambda root, split, classes: manifest.read_clip_manifest(root)[split],
    ),
    "manifest_frame": Corpus(
        "manifest_frame",
        "",
        lambda root: root.is_file(),
        lambda root, split, classes: manifest.read_frame_manifest(root)[split],
    ),
}


def needs_data_root(task) -> bool:
    """False for user-defined tasks, whose manifest says where the audio is."""
    return task.source is None


def corpus_root(task, data_root: str | os.PathLike) -> Path:
    """The folder of ``task``'s corpus: ``data_root`` itself if it has the corpus layout,
    else its subfolder named after the corpus (e.g. ``<root>/tau22``). A user task's root is its manifest."""
    if task.source is not None:
        return Path(task.source)
    corpus = CORPORA[task.corpus]
    root = Path(data_root)
    if not root.exists():
        raise DataError(f"data root {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data root {root} is not a folder")
    if corpus.looks_like(root):
        return root
    sub = root / corpus.subfolder
    if sub.is_dir():
        return sub
    raise DataError(
        f"{root}: no {corpus.name} data for task {task.display} (expected the {corpus.name} layout here or in {sub})"
    )


def has_split(task, root: Path, split: str) -> bool:
    corpus = CORPORA[task.corpus]
    return corpus.has_split is not None and corpus.has_split(root, split)


def read_split(task, root: Path, split: str) -> list[AudioItem]:
    items = CORPORA[task.corpus].read(root, split, classes=task.classes)
    if task.level == "frame" and split in (task.train_split, task.test_split):
        missing = [item.key for item in items if item.events is None]
        if missing:
            raise DataError(f"{root}: split {split!r} has clips without strong labels, e.g. {missing[0]}")
    return items
