"""Scoring federated predictors on the clients' windows, and the per-method result rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from ..io import atomic_path
from .pool import ActorPool


def chunks(xs: list, n: int) -> list[list]:
    return [xs[i : i + n] for i in range(0, len(xs), n)]


def save_state(path: Path, state: dict[str, np.ndarray]) -> None:
    """An adapter state as safetensors, written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp))


def evaluate(pool: ActorPool, clients: list[str], groups_terms: dict[str, list], assignment: dict[str, str],
             split: str = "test") -> tuple[dict[str, tuple[float, int]], float, int]:
    """Per-client (mean loss, windows) of each client's group prediction, the peak worker memory
    and the windows scored."""
    import ray

    items = []
    for g, terms in groups_terms.items():
        ref = ray.put(terms)
        members = [c for c in clients if assignment[c] == g]
        for k, chunk in enumerate(chunks(members, 10)):
            items.append(((g, k), (chunk, split, ref)))
    res = pool.map("evaluate", items, desc=f"evaluate on {split}")
    per: dict[str, tuple[float, int]] = {}
    for v in res.results.values():
        per.update(v["per_client"])
    windows = sum(v["windows"] for v in res.results.values())
    peak = max([v["peak_rss_mb"] for v in res.results.values()] or [0.0])
    return per, peak, windows


def method_row(per: dict[str, tuple[float, int]], clients: list[str], **extra) -> dict:
    """A method's result: the mean over clients of their test loss (and pooled over windows)."""
    vals = [per[c][0] for c in clients if c in per]
    n = [per[c][1] for c in clients if c in per]
    return {"test_loss": float(np.mean(vals)), "test_loss_pooled": float(np.average(vals, weights=n)),
            "clients_evaluated": len(vals), "per_client": {c: per[c][0] for c in clients if c in per}, **extra}
