"""The on-disk feature cache: log-mel features per audio file and front-end configuration, as float16 .npy."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from keras_mtl.core import fileio
from keras_mtl.features.logmel import FrontEndConfig

log = logging.getLogger(__name__)


ENDS = 64 * 1024


def _ends_digest(path: Path, size: int) -> str:
    """SHA-1 of the first and last ENDS bytes of a file (all of it when shorter than twice that)."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        digest.update(handle.read(ENDS))
        if size > 2 * ENDS:
            handle.seek(size - ENDS)
        digest.update(handle.read(ENDS))
    return digest.hexdigest()


class FeatureCache:
    """Log-mel features stored once per audio file and front-end config, as float16 ``.npy``.

    The key is the file's absolute path, size, modification and status-change times, inode and a
    digest of its first and last 64 KiB, so a file replaced by another one is recomputed even when
    the replacement keeps its name, size and modification time (an archive unpacked over an older
    release, ``cp -p``, ``rsync -a``: the status-change time cannot be set back; the digest covers file
    systems without one). Writes go to a temporary file that is then renamed: never half-written.
    """

    def __init__(self, root: str | os.PathLike, config: FrontEndConfig):
        self.config = config
        self.root = Path(root) / config.fingerprint()
        self.root.mkdir(parents=True, exist_ok=True)
        info = self.root / "frontend.json"
        if not info.exists():
            fileio.write_json(info, dataclasses.asdict(config))

    def path_for(self, audio_path: str | os.PathLike, n_samples: int, pad: str = "zeros", offset: int = 0) -> Path:
        """Where the features of ``n_samples`` samples from sample ``offset`` of the file (padded by ``pad``) live."""
        audio_path = Path(audio_path).resolve()
        stat = audio_path.stat()
        key = (
            f"{audio_path}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}|"
            f"{_ends_digest(audio_path, stat.st_size)}|{n_samples}"
        ) + ("" if pad == "zeros" else f"|{pad}")
        key += f"|@{offset}" if offset else ""
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest[2:]}.npy"

    def load(self, audio_path, n_samples: int, pad: str = "zeros", offset: int = 0) -> np.ndarray | None:
        path = self.path_for(audio_path, n_samples, pad, offset)
        if not path.exists():
            return None
        try:
            return np.load(path)
        except (OSError, ValueError):
            log.warning("feature cache entry %s is unreadable; recomputing", path)
            return None

    def store(self, audio_path, n_samples: int, features: np.ndarray, pad: str = "zeros", offset: int = 0) -> None:
        path = self.path_for(audio_path, n_samples, pad, offset)
        path.parent.mkdir(parents=True, exist_ok=True)
        with fileio.atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, features.astype(np.float16))
