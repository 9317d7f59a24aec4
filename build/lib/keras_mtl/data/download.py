"""Corpus downloader: resumable HTTP, checksum verification, safe extraction.

A descriptor (YAML, ``datasets/<corpus>/descriptor.yaml``) lists the files of a corpus with
their published checksums, or says which manual steps a corpus needs (licence terms, YouTube
sources). Downloads go to ``<file>.part`` and resume from there with an HTTP Range request;
a file counts as downloaded only once its checksum matches. Archives are checked member by
member before anything is written: absolute paths, ``..`` components, links and devices are
refused, and extraction goes to a temporary folder that is renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

import yaml
from tqdm.auto import tqdm

from keras_mtl.core import fileio
from keras_mtl.core.errors import DataError, UserError

log = logging.getLogger(__name__)
CHUNK = 1 << 16
HASHES = ("sha256", "md5")


def load_descriptor(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"descriptor {path} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or "name" not in data:
        raise UserError(f"{path}: a descriptor needs at least a 'name'")
    for index, entry in enumerate(data.get("files") or []):
        if "url" not in entry or not any(h in entry for h in HASHES):
            raise UserError(f"{path}: files[{index}] needs a url and a published sha256 or md5")
    return data


def download_corpus(descriptor: dict, to: str | os.PathLike, keep_archives: bool = True) -> Path:
    """Fetch, verify and extract every file of ``descriptor`` into ``to``; returns ``to``."""
    if descriptor.get("manual"):
        raise UserError(f"{descriptor['name']} needs manual steps: {' '.join(str(descriptor['manual']).split())}")
    files = descriptor.get("files") or []
    if not files:
        raise UserError(f"descriptor {descriptor['name']} lists no files")
    to = Path(to)
    archives = to / ".archives"
    done = to / ".extracted"
    for entry in files:
        name = entry.get("filename") or PurePosixPath(entry["url"]).name
        archive = archives / name
        if (done / name).is_file():
            log.info("%s: already downloaded and extracted", name)
            continue
        fetch(entry["url"], archive, entry)
        if is_archive(archive):
            extract(archive, to / entry.get("extract_to", "."))
        else:
            shutil.copy2(archive, to / name)
        fileio.write_text(done / name, entry.get("sha256") or entry.get("md5") or "")
        if not keep_archives:
            archive.unlink()
    return to


def fetch(url: str, dest: Path, entry: dict) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``) and verify its checksum."""
    if dest.is_file() and _verify(dest, entry):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part is already complete
            response = None
        else:
            raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"{url}: cannot connect ({getattr(exc, 'reason', exc)})") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            if have and not resumed:
                have = 0  # the server ignored the range: start again
            total = response.headers.get("Content-Length")
            total = int(total) + have if total is not None else entry.get("size")
            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=None)
            try:
                with open(part, "ab" if resumed else "wb") as out:
                    while True:
                        try:
                            chunk = response.read(CHUNK)
                        except (OSError, ValueError, http.client.HTTPException) as exc:
                            raise DataError(
                                f"{url}: download interrupted after {out.tell()} bytes ({exc}); run again to resume"
                            ) from None
                        if not chunk:
                            break
                        out.write(chunk)
                        bar.update(len(chunk))
            finally:
                bar.close()
            if total is not None and out_size(part) < int(total):
                raise DataError(
                    f"{url}: download interrupted at {out_size(part)} of {total} bytes; run again to resume"
                )
    size = part.stat().st_size
    if entry.get("size") and size < int(entry["size"]):
        raise DataError(f"{url}: download interrupted at {size} of {entry['size']} bytes; run again to resume")
    if not _verify(part, entry):
        expected = {h: entry[h] for h in HASHES if h in entry}
        part.unlink()
        raise DataError(f"{url}: checksum mismatch (expected {expected}); the download was deleted")
    os.replace(part, dest)
    return dest


def out_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _verify(path: Path, entry: dict) -> bool:
    """Whether ``path`` matches the entry's published checksum (sha256 preferred, else md5)."""
    for name in HASHES:
        if name in entry:
            digest = hashlib.new(name)
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            return digest.hexdigest().lower() == str(entry[name]).lower()
    return False


def is_archive(path: Path) -> bool:
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def _check_member(archive: Path, name: str) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: refusing member with an absolute path: {name!r}")
    if ".." in pure.parts:
        raise DataError(f"{archive}: refusing member that escapes the target folder: {name!r}")


def extract(archive: Path, target: Path) -> None:
    """Extract after checking every member; nothing is written when one is unsafe."""
    target.mkdir(parents=True, exist_ok=True)
    staging = target / f".extracting-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _check_member(archive, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DataError(f"{archive}: refusing symbolic link member {info.filename!r}")
            staging.mkdir()
            zf.extractall(staging)
    else:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                _check_member(archive, member.name)
                if member.issym() or member.islnk():
                    raise DataError(f"{archive}: refusing link member {member.name!r}")
                if not (member.isfile() or member.isdir()):
                    raise DataError(f"{archive}: refusing special member {member.name!r}")
            staging.mkdir()
            tf.extractall(staging, members=members, filter="data")
    _merge(staging, target)
    shutil.rmtree(staging, ignore_errors=True)


def _merge(source: Path, destination: Path) -> None:
    """Move everything in ``source`` into ``destination``, replacing files and merging folders."""
    for item in source.iterdir():
        target = destination / item.name
        if item.is_dir() and target.is_dir():
            _merge(item, target)
        else:
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(item, target)
