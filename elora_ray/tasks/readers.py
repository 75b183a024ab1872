"""Generic record readers: jsonl, json, csv, tsv, parquet and ``datasets`` saved to disk.

Every reader returns ``[(line, record), ...]`` where ``line`` is the 1-based line (text
formats) or row number (binary formats) used in error messages.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable

from ..errors import DataError

Record = dict[str, Any]
EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def detect_format(path: Path) -> str:
    """Format from the extension; a directory (or ``dir::split``) is ``hf_disk``."""
    base = Path(str(path).split("::", 1)[0])
    if base.is_dir():
        return "hf_disk"
    fmt = EXTENSIONS.get(base.suffix.lower())
    if fmt is None and not base.exists():
        raise DataError("file not found", path=path)
    if fmt is None:
        raise DataError(f"cannot tell the format from the extension '{base.suffix}'; set format: jsonl|json|csv|tsv|parquet|hf_disk", path=path)
    return fmt


def read_lines(path: Path) -> list[tuple[int, str]]:
    """UTF-8 lines (BOM stripped), each checked so bad bytes are reported with their line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except IsADirectoryError:
        raise DataError("is a directory, expected a file", path=path) from None
    out = []
    for i, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})", path=path, line=i) from None
        if i == 1:
            text = text.lstrip("\ufeff")
        out.append((i, text))
    return out


def _jsonl(path: Path) -> list[tuple[int, Record]]:
    records = []
    for i, text in read_lines(path):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg} at column {exc.colno})", path=path, line=i) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=i)
        records.append((i, obj))
    return records


def _json(path: Path) -> list[tuple[int, Record]]:
    text = "\n".join(t for _, t in read_lines(path))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg})", path=path, line=exc.lineno) from None
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DataError("expected a JSON list of objects", path=path)
    return [(i, r) for i, r in enumerate(obj, start=1)]


def _delimited(path: Path, delimiter: str) -> list[tuple[int, Record]]:
    lines = read_lines(path)
    if not lines:
        raise DataError("empty file", path=path)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    header_line, header_text = lines[0]
    header = next(csv.reader([header_text], delimiter=delimiter, quoting=quoting))
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        raise DataError(f"duplicate column names in header {header}", path=path, line=header_line)
    records = []
    if delimiter == "\t":
        for i, text in lines[1:]:
            if not text.strip():
                continue
            row = text.split("\t")
            if len(row) != len(header):
                raise DataError(f"expected {len(header)} tab-separated fields, found {len(row)}", path=path, line=i)
            records.append((i, dict(zip(header, row))))
        return records
    # CSV fields may span lines: parse the whole body and track the line of each row.
    body = "\n".join(t for _, t in lines[1:])
    reader = csv.reader(io.StringIO(body), delimiter=delimiter)
    try:
        for row in reader:
            line = reader.line_num + 1
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"expected {len(header)} comma-separated fields, found {len(row)}", path=path, line=line)
            records.append((line, dict(zip(header, row))))
    except csv.Error as exc:
        raise DataError(f"malformed CSV: {exc}", path=path, line=reader.line_num + 1) from None
    return records


def _parquet(path: Path) -> list[tuple[int, Record]]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError("file not found", path=path)
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise DataError(f"unreadable parquet: {exc}", path=path) from None
    return [(i, r) for i, r in enumerate(rows, start=1)]


def _hf_disk(path: Path) -> list[tuple[int, Record]]:
    import datasets

    directory, _, split = str(path).partition("::")
    if not Path(directory).is_dir():
        raise DataError("dataset directory not found", path=directory)
    try:
        ds = datasets.load_from_disk(directory)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"not a dataset saved with save_to_disk: {exc}", path=directory) from None
    if isinstance(ds, datasets.DatasetDict):
        if not split:
            raise DataError(f"a DatasetDict with splits {list(ds)}; name one as '{directory}::<split>'", path=directory)
        if split not in ds:
            raise DataError(f"split '{split}' not in {list(ds)}", path=directory)
        ds = ds[split]
    return [(i, r) for i, r in enumerate(ds, start=1)]


def read_records(path: str | Path, fmt: str = "auto", task: str | None = None) -> list[tuple[int, Record]]:
    """Read ``path`` as ``fmt`` (``auto``: by extension, a directory is ``hf_disk``).

    Returns ``[(line, record), ...]``; every problem raises :class:`DataError` naming the
    file (and ``task`` when given), plus the line where it is known.
    """
    path = Path(path)
    try:
        fmt = detect_format(path) if fmt == "auto" else fmt.lower()
        reader = _READERS.get(fmt)
        if reader is None:
            raise DataError(f"unknown format '{fmt}' (use one of {sorted(_READERS)} or auto)", path=path)
        records = reader(path)
        if not records:
            raise DataError("no records", path=path)
    except DataError as exc:
        if task is None or exc.task is not None:
            raise
        raise DataError(exc.reason, path=exc.path, line=exc.line, field=exc.field, task=task) from None
    return records


def _csv(path: Path) -> list[tuple[int, Record]]:
    return _delimited(path, ",")


def _tsv(path: Path) -> list[tuple[int, Record]]:
    return _delimited(path, "\t")


_READERS: dict[str, Callable[[Path], list[tuple[int, Record]]]] = {
    "jsonl": _jsonl,
    "json": _json,
    "csv": _csv,
    "tsv": _tsv,
    "parquet": _parquet,
    "hf_disk": _hf_disk,
}
