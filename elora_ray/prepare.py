"""Stage 0 — prepare: load and validate every task, write it keyed by sample id.

Writes under the run directory::

    data/<task>/<split>.parquet   task, split, sample_id, text, text_pair, label, label_id
    data/manifest.json            labels, sizes, sources and split notes per task

Later stages read these files (never the raw inputs again), so every stage sees the same
samples in the same splits with the same ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pyarrow.parquet as pq

from .config import RunConfig
from .io import write_json, write_parquet
from .tasks.load import load_tasks
from .tasks.schema import SPLITS, Example, TaskData

log = logging.getLogger(__name__)
CARVING_VERSION = 2
"""Bumped when split carving changes (2: MultiRC passages stay in one split), so old runs re-prepare."""


def _file_stats(cfg: RunConfig) -> list:
    """(path, size, mtime) of every input file, so edited data is prepared again."""
    from .tasks.builtin import builtin_default_dir, canonical_format

    paths: list[Path] = []
    for t in cfg.tasks:
        fmt = canonical_format(t.format)
        if fmt is not None:
            folder = Path(t.path) if t.path else builtin_default_dir(fmt, cfg.resolved_data_root())
            paths.extend(sorted(folder.glob("*")) if folder.is_dir() else [])
        paths.extend(Path(str(f).split("::")[0]) for f in (t.train, t.validation, t.test) if f)
    stats = []
    for p in paths:
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                st = f.stat()
                stats.append([str(f), st.st_size, st.st_mtime_ns])
    return stats


def data_fingerprint(cfg: RunConfig) -> str:
    """Hash of everything that decides the prepared data (tasks, inputs, suite, splits)."""
    part = {
        "files": _file_stats(cfg),
        "tasks": [t.model_dump(mode="json") for t in cfg.tasks],
        "suite": cfg.suite.model_dump(mode="json") if not cfg.tasks else None,
        "splits": cfg.splits.model_dump(mode="json"),
        "data_root": str(cfg.resolved_data_root()),
        "carving": CARVING_VERSION,
    }
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]


def prepare(cfg: RunConfig, run_dir: Path, force: bool = False) -> dict:
    """Load tasks and write them; skip if the run directory already holds the same data."""
    manifest_path = run_dir / "data" / "manifest.json"
    fp = data_fingerprint(cfg)
    if manifest_path.is_file() and not force:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") == fp:
            log.info("prepare: data already prepared in %s (fingerprint %s), skipping", manifest_path.parent, fp)
            return manifest
        log.info("prepare: configuration or data changed since the last prepare; reading the data again")
    tasks = load_tasks(cfg)
    for t in tasks:
        for split in SPLITS:
            write_parquet(run_dir / "data" / t.name / f"{split}.parquet", t.to_table(split))
    manifest = {
        "fingerprint": fp,
        "tasks": {
            t.name: {
                "labels": t.labels,
                "verbalizer": t.verbalizer,
                "sizes": t.sizes(),
                "sources": t.sources,
                "notes": t.notes,
            }
            for t in tasks
        },
    }
    write_json(manifest_path, manifest)  # written last: its presence means the data is complete
    for t in tasks:
        log.info("task %-20s %s labels=%s", t.name, t.sizes(), t.labels)
        for note in t.notes:
            log.info("  %s: %s", t.name, note)
    return manifest


def read_prepared(run_dir: Path) -> list[TaskData]:
    """Tasks as prepared in ``run_dir`` (raises if ``prepare`` has not completed)."""
    manifest_path = run_dir / "data" / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: run `elora prepare` first")
    manifest = json.loads(manifest_path.read_text())
    tasks = []
    for name, meta in manifest["tasks"].items():
        splits: dict[str, list[Example]] = {}
        for split in SPLITS:
            table = pq.read_table(run_dir / "data" / name / f"{split}.parquet").to_pylist()
            splits[split] = [
                Example(sample_id=r["sample_id"], text=r["text"], label=r["label"], text_pair=r["text_pair"])
                for r in table
            ]
        tasks.append(
            TaskData(
                name=name, labels=meta["labels"], splits=splits, notes=meta["notes"],
                sources=meta["sources"], verbalizer=meta.get("verbalizer"),
            )
        )
    return tasks
