"""Read featurisation output back as numpy arrays, keyed by task and sample id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ..errors import ConfigError, DataError
from ..layout import FEATURE_DIR, RunLayout


@dataclass
class TaskFeatures:
    sample_ids: np.ndarray  # [N] str
    label_ids: np.ndarray  # [N] int64
    h0: np.ndarray  # [N] float32, gold-class log-odds at θ*
    grad: np.ndarray  # [N, d] float32, projected ∇h
    flops: np.ndarray  # [N] float64, measured cost of featurising each sample

    def __len__(self) -> int:
        return len(self.sample_ids)


def read_manifest(run_dir: Path) -> dict:
    path = RunLayout(run_dir).features_manifest
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `elora featurize` first")
    return json.loads(path.read_text())


def read_features(run_dir: Path, split: str, tasks: list[str] | None = None) -> dict[str, TaskFeatures]:
    """Features of ``split`` per task (all tasks in the manifest unless ``tasks`` is given)."""
    manifest = read_manifest(run_dir)
    if split not in manifest["splits"]:
        raise ConfigError(f"split {split!r} was not featurized (have {sorted(manifest['splits'])}); set featurize.splits")
    names = tasks if tasks is not None else sorted(manifest["splits"][split])
    out: dict[str, TaskFeatures] = {}
    d = int(manifest["dim"])
    for name in names:
        files = sorted((Path(run_dir) / FEATURE_DIR / split / name).glob("part-*.parquet"))
        if not files:
            raise FileNotFoundError(f"no {split} features for task {name!r} in {run_dir}/{FEATURE_DIR}")
        parts = [pq.read_table(f) for f in files]
        grad = np.concatenate([t["grad"].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, d) for t in parts])
        out[name] = TaskFeatures(
            sample_ids=np.concatenate([t["sample_id"].to_numpy(zero_copy_only=False) for t in parts]).astype(str),
            label_ids=np.concatenate([t["label_id"].to_numpy() for t in parts]),
            h0=np.concatenate([t["h0"].to_numpy() for t in parts]).astype(np.float32),
            grad=grad.astype(np.float32, copy=False),
            flops=np.concatenate([t["flops"].to_numpy() for t in parts]),
        )
        bad = ~(np.isfinite(out[name].grad).all(axis=1) & np.isfinite(out[name].h0))
        if bad.any():
            sizes = np.cumsum([t.num_rows for t in parts])
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{int(bad.sum())} sample(s) have NaN/inf features, e.g. {out[name].sample_ids[bad][:3].tolist()}; "
                f"the model produced non-finite gradients or the file was altered. Delete the shard and rerun "
                f"`elora featurize` to recompute it",
                path=files[int(np.searchsorted(sizes, first, side="right"))], field="grad/h0", task=name,
            )
    return out
