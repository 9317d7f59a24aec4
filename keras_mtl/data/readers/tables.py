"""Reading the tab/comma separated metadata files of the DCASE corpora, with line-numbered errors."""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from keras_mtl.core.errors import DataError


@dataclasses.dataclass(frozen=True)
class Row:
    """One data row: its 1-based line number in the file and its fields by column name."""

    line: int
    fields: dict

    def get(self, column: str, default: str = "") -> str:
        value = self.fields.get(column)
        return default if value is None else value.strip()


def read_table(path: str | os.PathLike, required: Sequence[str], delimiter: str | None = None) -> list[Row]:
    """Read a headed CSV/TSV file; the delimiter is sniffed (tab or comma) unless given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: metadata file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read metadata file ({exc})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: empty metadata file (no header line)")
    if delimiter is None:
        delimiter = "\t" if "\t" in lines[0] else ","
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {', '.join(missing)} (header has: {', '.join(header)})")
    rows = []
    for line_no, values in enumerate(reader, start=2):
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) > len(header):
            raise DataError(f"{path}:{line_no}: {len(values)} fields but the header has {len(header)}")
        rows.append(Row(line_no, dict(zip(header, values))))
    return rows


def parse_float(row: Row, column: str, path: Path) -> float:
    raw = row.get(column)
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"{path}:{row.line}: {column} {raw!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise DataError(f"{path}:{row.line}: {column} {raw!r} is not a finite number")
    return value


def iter_audio_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3") and not path.name.startswith("."):
            yield path
