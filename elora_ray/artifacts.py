"""Readers of the artifacts that stages share (paths from :class:`elora_ray.layout.RunLayout`).

A stage reads another stage's output through these functions, so no stage imports another
stage's module to find a file. Each raises ``FileNotFoundError`` naming the command that
writes the missing artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .layout import RunLayout
from .tasks.schema import SPLITS, Example, TaskData


def _need(path: Path, command: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `elora {command}` first")
    return path


def read_data_manifest(run_dir: Path) -> dict:
    """``data/manifest.json``: fingerprint, and labels, sizes, sources and notes per task."""
    return json.loads(_need(RunLayout(run_dir).data_manifest, "prepare").read_text())


def read_prepared(run_dir: Path) -> list[TaskData]:
    """Tasks as prepared in ``run_dir`` (raises if ``prepare`` has not completed)."""
    layout = RunLayout(run_dir)
    manifest = read_data_manifest(run_dir)
    tasks = []
    for name, meta in manifest["tasks"].items():
        splits: dict[str, list[Example]] = {}
        for split in SPLITS:
            table = pq.read_table(layout.data_split(name, split)).to_pylist()
            splits[split] = [
                Example(sample_id=r["sample_id"], text=r["text"], label=r["label"], text_pair=r["text_pair"],
                        unit=r.get("unit"))  # no unit column: prepared before units existed
                for r in table
            ]
        tasks.append(
            TaskData(
                name=name, labels=meta["labels"], splits=splits, notes=meta["notes"],
                sources=meta["sources"], verbalizer=meta.get("verbalizer"),
            )
        )
    return tasks


def read_affinity(run_dir: Path) -> tuple[list[str], np.ndarray]:
    """``affinity.csv``: (task names, affinity matrix; larger is better transfer)."""
    frame = pd.read_csv(_need(RunLayout(run_dir).affinity, "estimate"), index_col=0)
    return [str(c) for c in frame.columns], frame.to_numpy(dtype=float)


def read_affinity_halves(run_dir: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The two half-sample estimates written by the transfer / first-order affinity, or None."""
    paths = RunLayout(run_dir).affinity_halves
    if not all(p.is_file() for p in paths):
        return None
    return pd.read_csv(paths[0], index_col=0).to_numpy(dtype=float), pd.read_csv(paths[1], index_col=0).to_numpy(dtype=float)


def read_groups(run_dir: Path) -> list[list[str]]:
    """``groups.json``: the task groups chosen by the cluster stage."""
    return json.loads(_need(RunLayout(run_dir).groups, "cluster").read_text())["groups"]


def read_job_record(run_dir: Path, job_id: str) -> dict | None:
    """An adapter job's record (``train/jobs/<id>.json``), or None while the job is not done."""
    p = RunLayout(run_dir).job_record(job_id)
    return json.loads(p.read_text()) if p.is_file() else None


def heads_path(run_dir: Path) -> Path | None:
    """The probed task heads at θ* when featurize wrote them (encoders), else None."""
    p = RunLayout(run_dir).heads
    return p if p.is_file() else None
