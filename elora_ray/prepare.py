"""Stage 0 — prepare: load and validate every task, write it keyed by sample id.

Writes under the run directory::

    data/<task>/<split>.parquet   task, split, sample_id, text, text_pair, label, label_id, unit
    data/manifest.json            labels, sizes, sources and split notes per task

Later stages read these files with :func:`elora_ray.artifacts.read_prepared` (never the raw inputs again), so every stage sees the same
samples in the same splits with the same ids.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow.parquet as pq

from .config import RunConfig, dump_config
from .io import fingerprint, write_json, write_parquet, write_text
from .layout import RunLayout
from .tasks.load import default_verbalizers, load_tasks
from .tasks.schema import SPLITS

log = logging.getLogger(__name__)
CARVING_VERSION = 2
"""Bumped when split carving changes (2: MultiRC passages stay in one split), so old runs re-prepare."""


def _file_stats(cfg: RunConfig) -> list:
    """(path, size, mtime) of every input file, so edited data is prepared again."""
    from .io import is_uri
    from .tasks.builtin import builtin_default_dir, canonical_format
    from .tasks.remote import remote_stats

    paths: list[Path] = []
    stats: list = []
    for t in cfg.tasks:
        fmt = canonical_format(t.format)
        if fmt is not None and t.path and is_uri(t.path):
            stats.extend(remote_stats(t.path))  # the bucket's own sizes and times: the same on every machine
        elif fmt is not None:
            folder = Path(t.path) if t.path else builtin_default_dir(fmt, cfg.resolved_data_root())
            paths.extend(sorted(folder.glob("*")) if folder.is_dir() else [])
        for f in (t.train, t.validation, t.test):
            if f and is_uri(f):
                stats.extend(remote_stats(str(f).split("::")[0]))
            elif f:
                paths.append(Path(str(f).split("::")[0]))
    for p in paths:
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                st = f.stat()
                stats.append([str(f), st.st_size, st.st_mtime_ns])
    return stats


def write_run_config(cfg: RunConfig, run_dir: Path) -> None:
    """Record the resolved config, once the data has been validated (a bad config or bad data
    must leave the previous run's ``config.yaml`` and artifacts as they were)."""
    write_text(RunLayout(run_dir).config, dump_config(cfg))


def model_kind(cfg: RunConfig) -> str | None:
    """``decoder``/``encoder`` when a task uses a built-in reader (whose default words only decoders
    score), else None: the model is not looked up for tasks it cannot change. No weights are read."""
    from .tasks.builtin import canonical_format

    if not any(canonical_format(t.format) is not None for t in cfg.tasks):
        return None
    from .models.registry import check_model_name

    return check_model_name(cfg.model)


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
    defaults = default_verbalizers(cfg, model_kind(cfg))
    if defaults:  # decoder runs of built-in readers only: encoder runs keep their fingerprints
        part["default_verbalizers"] = defaults
    return fingerprint(part)


def same_prepared_data(layout: RunLayout, previous: dict, tasks, tables: dict) -> bool:
    """True when the run directory already holds exactly ``tables`` (every task and split, same rows in
    the same order) with the same labels and verbalizers: the data a run's artifacts were made from."""
    old_tasks = previous.get("tasks", {})
    if list(old_tasks) != [t.name for t in tasks]:
        return False
    for t in tasks:
        meta = old_tasks[t.name]
        if list(meta.get("labels", [])) != list(t.labels) or meta.get("verbalizer") != t.verbalizer:
            return False
    for (name, split), table in tables.items():
        path = layout.data_split(name, split)
        if not path.is_file():
            return False
        stored = pq.read_table(path)
        if stored.schema != table.schema or not stored.equals(table):
            return False
    return True


def prepare(cfg: RunConfig, run_dir: Path, force: bool = False) -> dict:
    """Load tasks and write them; skip if the run directory already holds the same data."""
    layout = RunLayout(run_dir)
    manifest_path = layout.data_manifest
    fp = data_fingerprint(cfg)
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if previous is not None and not force:
        # "inputs": what the data was read from; manifests written before it kept that in "fingerprint"
        if previous.get("inputs", previous.get("fingerprint")) == fp:
            log.info("prepare: data already prepared in %s (fingerprint %s), skipping", manifest_path.parent, fp)
            return previous
        log.info("prepare: configuration or data files changed since the last prepare; reading the data again")
    tasks = load_tasks(cfg, model_kind(cfg))
    tables = {(t.name, split): t.to_table(split) for t in tasks for split in SPLITS}
    kept = previous is not None and same_prepared_data(layout, previous, tasks, tables)
    if kept:
        # Same samples, labels and splits (e.g. the files were copied or touched, or the data moved):
        # the later stages' artifacts stay valid, so the data keeps its fingerprint.
        log.info("prepare: the data read is identical to what %s holds; later stages stay valid", manifest_path.parent)
    else:
        for (name, split), table in tables.items():
            write_parquet(layout.data_split(name, split), table)
    manifest = {
        "fingerprint": previous["fingerprint"] if kept else fp,
        "inputs": fp,
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
    if kept:
        return manifest
    for t in tasks:
        log.info("task %-20s %s labels=%s", t.name, t.sizes(), t.labels)
        for note in t.notes:
            log.info("  %s: %s", t.name, note)
    return manifest
