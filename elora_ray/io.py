"""Atomic artifact writing: a file is either absent or complete, never half-written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq


def cache_dir() -> Path:
    """``$ELORA_CACHE`` (default ``~/.cache/elora_ray``): converted models, downloaded data, working copies."""
    return Path(os.environ.get("ELORA_CACHE", "~/.cache/elora_ray")).expanduser()


REMOTE_SCHEMES = ("s3://", "gs://", "gcs://")


def is_uri(path: object) -> bool:
    """Whether ``path`` names object storage (``s3://``, ``gs://``) rather than a local file."""
    return isinstance(path, str) and path.startswith(REMOTE_SCHEMES)


@contextmanager
def atomic_path(target: str | Path, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    Works for files and directories. On failure the temporary is removed and any existing
    ``target`` is left untouched. ``keep_existing`` (see :func:`publish_once`): when ``target``
    already exists, the new copy is discarded instead of replacing it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    staged = tmp / target.name
    try:
        yield staged
        if not staged.exists():
            raise RuntimeError(f"nothing was written for {target}")
        if keep_existing:
            try:
                os.rename(staged, target)  # atomic; fails when another process published first
            except OSError:
                if not target.exists():
                    raise
        elif target.is_dir() and staged.is_dir():
            backup = target.with_name(f".{target.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(target, backup)
            os.replace(staged, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_once(target: str | Path):
    """:func:`atomic_path` for a directory whose content is the same whoever builds it (a model cache).

    Several processes (featurize actors, DDP ranks, nodes sharing a cache) may build it at once:
    the first complete copy is renamed into place and kept; a later one is discarded instead of
    replacing a directory another process may be reading.
    """
    return atomic_path(target, keep_existing=True)


def fingerprint(obj: Any) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as sorted JSON: the key every stage compares with
    its artifacts' to decide whether they are current (a rerun skips what matches)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json(target: str | Path, obj: Any) -> Path:
    return write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_parquet(target: str | Path, table: pa.Table) -> Path:
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return Path(target)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
