"""The one reader of headed metadata tables (DCASE tsv, Common Voice tsv, CSV manifests), with line-numbered errors.

Each format is read with its own rules (``TableFormat``): DCASE and Common Voice tables are split on
their delimiter with no quote processing (a ``"`` in a Common Voice sentence is a character, as in
the corpus's own tooling); manifests are CSV with standard quoting (RFC 4180). Every non-blank data
line becomes exactly one row, or the read fails with an error naming the file and line.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from keras_mtl.core.errors import DataError

DELIMITER_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon"}


@dataclasses.dataclass(frozen=True)
class TableFormat:
    """How one kind of table is read.

    ``delimiters``: the ones the format allows, detected from the header line in this order
    (dcase_util's readers detect tab, comma and semicolon the same way). ``quoting``: standard
    CSV quoting (a field may be ``"``-quoted); off, a quote is an ordinary character.
    """

    name: str
    delimiters: tuple[str, ...] = ("\t", ",", ";")
    quoting: bool = False


DCASE = TableFormat("DCASE metadata table")
COMMON_VOICE = TableFormat("Common Voice tsv", delimiters=("\t",))
MANIFEST = TableFormat("CSV manifest", delimiters=(",", "\t", ";"), quoting=True)


@dataclasses.dataclass(frozen=True)
class Row:
    """One data row: its 1-based line number in the file and its fields by column name."""

    line: int
    fields: dict

    def get(self, column: str, default: str = "") -> str:
        value = self.fields.get(column)
        return default if value is None else value.strip()


def _split(line: str, delimiter: str, quoting: bool) -> list[str]:
    if not quoting:
        return line.split(delimiter)
    return next(csv.reader([line], delimiter=delimiter), [])


def _delimiter_of(path: Path, header_line: str, required: Sequence[str], fmt: TableFormat) -> str:
    """The allowed delimiter under which the header has every required column; else a clear error."""
    for delimiter in fmt.delimiters:
        header = [h.strip() for h in _split(header_line, delimiter, fmt.quoting)]
        if all(c in header for c in required):
            return delimiter
    expected = fmt.delimiters[0]
    counts = {d: header_line.count(d) for d in DELIMITER_NAMES}
    found = max(counts, key=counts.get) if any(counts.values()) else None
    if found is not None and found not in fmt.delimiters:
        raise DataError(
            f"{path}:1: a {fmt.name} is {DELIMITER_NAMES[expected]}-separated, but this header is "
            f"{DELIMITER_NAMES[found]}-separated ({header_line.strip()!r})"
        )
    used = found if found in fmt.delimiters else expected
    header = [h.strip() for h in _split(header_line, used, fmt.quoting)]
    missing = [c for c in required if c not in header]
    raise DataError(
        f"{path}:1: missing column(s) {', '.join(missing)} (header read as "
        f"{DELIMITER_NAMES[used]}-separated: {', '.join(repr(h) for h in header)})"
    )


def read_table(path: str | os.PathLike, required: Sequence[str], fmt: TableFormat = DCASE) -> list[Row]:
    """Rows of a headed table in format ``fmt``; the delimiter is detected from the header.

    Raises DataError (naming the file and line) for a missing file or column, a delimiter the
    format does not allow, more fields than the header, or (CSV) a quote left open.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: metadata file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read metadata file ({exc})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}:1: empty metadata file (no header line)")
    delimiter = _delimiter_of(path, lines[0], required, fmt)
    header = [h.strip() for h in _split(lines[0], delimiter, fmt.quoting)]
    rows = []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        if fmt.quoting:
            try:
                values = next(csv.reader([line], delimiter=delimiter, strict=True))
            except csv.Error as exc:
                raise DataError(
                    f"{path}:{line_no}: unbalanced double quote ({exc}; in a CSV manifest a quoted field must "
                    'close on its own line, and a quote inside it is written "")'
                ) from None
        else:
            values = line.split(delimiter)
        if len(values) > len(header):
            raise DataError(
                f"{path}:{line_no}: {len(values)} fields but the header has {len(header)} "
                f"({DELIMITER_NAMES[delimiter]}-separated)"
            )
        rows.append(Row(line_no, dict(zip(header, values))))
    return rows


def parse_float(row: Row, column: str, path: Path) -> float:
    """The finite number in ``column`` of ``row``; DataError naming the line otherwise."""
    raw = row.get(column)
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"{path}:{row.line}: {column} {raw!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise DataError(f"{path}:{row.line}: {column} {raw!r} is not a finite number")
    return value


def iter_audio_files(folder: Path) -> Iterator[Path]:
    """Audio files (wav, flac, ogg, mp3) under ``folder``, sorted; hidden files skipped."""
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3") and not path.name.startswith("."):
            yield path
