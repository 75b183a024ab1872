"""Built-in readers for the GLUE / SuperGLUE files in ``../shared/data``.

Each reader yields, per split found on disk, records with the standard fields ``text``,
``text_pair`` (or None), ``label`` (a string) and ``row_id`` (stable within the file).

Split policy:
- SuperGLUE folders hold the FewGLUE_32dev release: ``train.jsonl`` and ``dev32.jsonl`` are
  32-example few-shot files, ``val.jsonl`` is the full official validation set. Only
  ``val.jsonl`` is read; train / validation / test are then carved from it with a fixed seed
  (and the run report says so).
- GLUE folders: ``train.tsv`` → train, ``dev.tsv`` → validation (QNLI has only dev.tsv).
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DataError
from .readers import _jsonl, read_lines

Record = dict[str, Any]


@dataclass(frozen=True)
class BuiltinFormat:
    """Where a benchmark task lives under ``data_root`` and how to parse its files."""

    folder: str  # under data_root
    files: dict[str, str]  # split -> file name
    parse: Callable[[Path], list[tuple[int, Record]]]
    verbalizer: dict[str, str]
    """Decoder models: label → the word the LM scores when ``tasks[].verbalizer`` does not name the
    label (natural words whose first tokens differ, unlike ``0``/``1``; encoders never use them)."""


def normalize_label(
    value: Any, *, path: str | Path | None = None, line: int | None = None, field: str = "label"
) -> str:
    """bool → true/false, integral numbers → '0'/'1', strings stay; None/NaN are errors."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if value != value:
            raise DataError("label is NaN", path=path, line=line, field=field)
        if value.is_integer():
            return str(int(value))
        return repr(value)
    if value is None:
        raise DataError("label is missing (null)", path=path, line=line, field=field)
    if not isinstance(value, str):
        raise DataError(
            f"label must be a string, number or boolean, got {type(value).__name__} {str(value)[:40]!r}",
            path=path, line=line, field=field,
        )
    text = value.strip()
    if not text:
        raise DataError("label is empty", path=path, line=line, field=field)
    return text


def _jsonl_objects(path: Path) -> list[tuple[int, dict]]:
    return _jsonl(path)


def _simple_jsonl(text: str, pair: str | None) -> Callable[[Path], list[tuple[int, Record]]]:
    """SuperGLUE flat records: ``text``/``pair`` fields, ``label``, ``idx`` as the row id."""

    def parse(path: Path) -> list[tuple[int, Record]]:
        rows = []
        for i, obj in _jsonl_objects(path):
            for f in (text, pair, "label"):
                if f and f not in obj:
                    raise DataError("missing field", path=path, line=i, field=f)
            rows.append((i, {
                "text": obj[text], "text_pair": obj[pair] if pair else None,
                "label": normalize_label(obj["label"], path=path, line=i),
                "row_id": str(obj.get("idx", i)),
            }))
        return rows
    return parse


_MARKUP = re.compile(r"<br>|<b>Sent \d+: </b>|</?b>")


def _multirc(path: Path) -> list[tuple[int, Record]]:
    """One record per answer: passage text, ``question + " " + answer``, the answer's label."""
    rows = []
    for i, obj in _jsonl_objects(path):
        try:
            passage = obj["passage"]
            text = " ".join(_MARKUP.sub(" ", passage["text"]).split())
            for q in passage["questions"]:
                for a in q["answers"]:
                    rows.append((i, {
                        "text": text,
                        "text_pair": f"{q['question']} {a['text']}",
                        "label": normalize_label(a["label"], path=path, line=i),
                        "row_id": f"p{obj['idx']}-q{q['idx']}-a{a['idx']}",
                    }))
        except KeyError as exc:
            raise DataError("missing field in MultiRC record", path=path, line=i, field=str(exc.args[0])) from None
    return rows


def _tsv(
    columns: dict[str, str | int], header: bool = True, width: int | None = None
) -> Callable[[Path], list[tuple[int, Record]]]:
    """columns maps text / text_pair / label (/ row_id) to a header name or a column index.

    Fields are split on tabs only (no quoting: GLUE text contains bare ``"``); a row must
    have exactly as many fields as the header (or ``width`` for header-less files).
    """

    def parse(path: Path) -> list[tuple[int, Record]]:
        lines = read_lines(path)
        if not lines:
            raise DataError("empty file", path=path)
        names: list[str] = []
        if header:
            names = [h.strip() for h in lines[0][1].split("\t")]
            lines = lines[1:]
            for col in columns.values():
                if isinstance(col, str) and col not in names:
                    raise DataError(f"column '{col}' not in header {names}", path=path, line=1, field=col)
        expected = len(names) if header else (width or max(c for c in columns.values() if isinstance(c, int)) + 1)
        rows = []
        for i, text in lines:
            if not text.strip():
                continue
            cells = text.split("\t")
            if len(cells) != expected:
                raise DataError(f"expected {expected} tab-separated fields, found {len(cells)}", path=path, line=i)
            get = lambda c: cells[names.index(c)] if isinstance(c, str) else cells[c]  # noqa: E731
            rows.append((i, {
                "text": get(columns["text"]),
                "text_pair": get(columns["text_pair"]) if "text_pair" in columns else None,
                "label": normalize_label(get(columns["label"]), path=path, line=i),
                "row_id": get(columns["row_id"]) if "row_id" in columns else str(i),
            }))
        return rows

    return parse


_GLUE_SPLITS = {"train": "train.tsv", "validation": "dev.tsv"}
_ENTAILMENT = {"entailment": "yes", "not_entailment": "no"}
_YES_NO = {"0": "no", "1": "yes"}

BUILTIN_FORMATS: dict[str, BuiltinFormat] = {
    "superglue/boolq": BuiltinFormat("superglue/BoolQ", {"validation": "val.jsonl"}, _simple_jsonl("passage", "question"),
                                     {"false": "no", "true": "yes"}),
    "superglue/rte": BuiltinFormat("superglue/RTE", {"validation": "val.jsonl"}, _simple_jsonl("premise", "hypothesis"),
                                   _ENTAILMENT),
    "superglue/multirc": BuiltinFormat("superglue/MultiRC", {"validation": "val.jsonl"}, _multirc, _YES_NO),
    "glue/sst2": BuiltinFormat("glue/SST-2", _GLUE_SPLITS, _tsv({"text": "sentence", "label": "label"}),
                               {"0": "negative", "1": "positive"}),
    "glue/cola": BuiltinFormat("glue/CoLA", _GLUE_SPLITS, _tsv({"text": 3, "label": 1}, header=False, width=4),
                               {"0": "unacceptable", "1": "acceptable"}),
    "glue/mrpc": BuiltinFormat("glue/MRPC", _GLUE_SPLITS, _tsv({"text": "#1 String", "text_pair": "#2 String", "label": "Quality"}),
                               _YES_NO),
    "glue/qnli": BuiltinFormat("glue/QNLI", {"validation": "dev.tsv"}, _tsv({"text": "question", "text_pair": "sentence", "label": "label", "row_id": "index"}),
                               _ENTAILMENT),
    "glue/wnli": BuiltinFormat("glue/WNLI", _GLUE_SPLITS, _tsv({"text": "sentence1", "text_pair": "sentence2", "label": "label", "row_id": "index"}),
                               _YES_NO),
}
_ALIASES = {"glue/sst-2": "glue/sst2"}


def canonical_format(fmt: str) -> str | None:
    """``GLUE/SST-2`` → ``glue/sst2``; None when ``fmt`` is not a built-in reader."""
    key = fmt.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in BUILTIN_FORMATS else None


def builtin_verbalizer(fmt: str) -> dict[str, str]:
    """The default label → word map of a built-in reader (decoder models only)."""
    return dict(BUILTIN_FORMATS[_require(fmt)].verbalizer)


def _require(fmt: str) -> str:
    key = canonical_format(fmt)
    if key is None:
        raise DataError(f"unknown built-in format '{fmt}' (known: {sorted(BUILTIN_FORMATS)})")
    return key


def builtin_default_dir(fmt: str, data_root: Path) -> Path:
    """Default folder of a built-in task, e.g. ``data_root/superglue/BoolQ``."""
    return Path(data_root) / BUILTIN_FORMATS[_require(fmt)].folder


def read_builtin(fmt: str, folder: Path, task: str) -> dict[str, tuple[Path, list[tuple[int, Record]]]]:
    """Per split present on disk: (file, ``[(line, record), ...]``) with standard fields."""
    fmt = _require(fmt)
    spec = BUILTIN_FORMATS[fmt]
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"folder for format '{fmt}' not found (looked in {folder}); set the task's path: to the "
            f"folder holding {sorted(spec.files.values())}, or data_root: (or $ELORA_DATA_ROOT) to the "
            f"directory containing '{spec.folder}'",
            path=folder, task=task,
        )
    out = {}
    for split, name in spec.files.items():
        path = folder / name
        if path.is_file():
            out[split] = (path, _parse(spec, path, task))
    if not out:
        raise DataError(f"none of {sorted(spec.files.values())} found", path=folder, task=task)
    return out


def _parse(spec: BuiltinFormat, path: Path, task: str) -> list[tuple[int, Record]]:
    try:
        rows = spec.parse(path)
    except DataError as exc:
        raise DataError(exc.reason, path=exc.path, line=exc.line, field=exc.field, task=task) from None
    if not rows:
        raise DataError("no records", path=path, task=task)
    return rows
