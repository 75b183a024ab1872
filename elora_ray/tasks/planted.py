"""Planted suites from real data: tasks cut as disjoint parts of real datasets.

Several tasks made from one source file (e.g. three disjoint samples of SST-2) share their
distribution, so a grouping method that measures transfer should put them together; tasks
from different sources may or may not belong together. This is the known structure against
which the affinity is measured (adjusted Rand index against the sources).

``write_planted_suite`` reads each source once through its built-in reader (all splits on disk
pooled), shuffles the rows with the suite seed, and deals them out as disjoint parts with
train / validation / test jsonl files. Nothing from the source files is written anywhere but
the folder you pass (keep it out of the repository: the data is not ours).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .builtin import builtin_default_dir, canonical_format, read_builtin


@dataclass(frozen=True)
class PartSizes:
    train: int = 300
    validation: int = 100
    test: int = 150

    @property
    def total(self) -> int:
        return self.train + self.validation + self.test


def _pooled_rows(fmt: str, data_root: Path) -> list[dict]:
    """Every record of a built-in source, all splits on disk, deduplicated by text."""
    per_split = read_builtin(fmt, builtin_default_dir(fmt, data_root), task=fmt)
    seen: set[tuple] = set()
    rows = []
    for split in sorted(per_split):
        _path, records = per_split[split]
        for _line, rec in records:
            key = (rec["text"], rec.get("text_pair"))
            if key in seen:
                continue
            seen.add(key)
            rows.append({"text": rec["text"], "text_pair": rec.get("text_pair"), "label": rec["label"]})
    return rows


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """Write atomically; a file that already holds exactly these rows is left alone (its modification
    time too, so a run prepared from it is not prepared and featurized again)."""
    text = "".join(json.dumps({"id": i, **r}) + "\n" for i, r in enumerate(rows))
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_planted_suite(
    sources: dict[str, int], out: str | Path, data_root: str | Path, *, sizes: PartSizes = PartSizes(), seed: int = 0,
) -> tuple[list[dict], dict[str, str]]:
    """Cut ``sources`` (built-in format → number of parts, e.g. ``{"glue/sst2": 3}``) into disjoint parts.

    Returns (task configs for ``RunConfig.tasks``, task name → source). Task names are
    ``<source>_<part>`` (``sst2_0``); files are ``out/<task>/{train,validation,test}.jsonl``.
    Raises ``DataError`` naming the source when it has fewer rows than its parts need.
    """
    out = Path(out)
    tasks, truth = [], {}
    for s_index, (fmt, parts) in enumerate(sources.items()):
        key = canonical_format(fmt)
        if key is None:
            raise DataError(f"unknown built-in source '{fmt}'")
        rows = _pooled_rows(key, Path(data_root))
        need = parts * sizes.total
        if len(rows) < need:
            raise DataError(f"{parts} parts of {sizes.total} rows need {need} rows; the source has {len(rows)}",
                            path=builtin_default_dir(key, Path(data_root)))
        order = np.random.default_rng([seed, s_index]).permutation(len(rows))
        short = key.split("/", 1)[1]
        for p in range(parts):
            name = f"{short}_{p}"
            chunk = [rows[i] for i in order[p * sizes.total: (p + 1) * sizes.total]]
            cuts = {"train": chunk[: sizes.train],
                    "validation": chunk[sizes.train: sizes.train + sizes.validation],
                    "test": chunk[sizes.train + sizes.validation:]}
            entry: dict = {"name": name, "format": "jsonl"}
            labels = sorted({r["label"] for r in chunk})
            entry["labels"] = labels
            for split, split_rows in cuts.items():
                path = out / name / f"{split}.jsonl"
                _write_jsonl(path, split_rows)
                entry[split] = str(path)
            tasks.append(entry)
            truth[name] = short
    return tasks, truth
