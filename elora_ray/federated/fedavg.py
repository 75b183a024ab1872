"""Federated Averaging over client groups, rounds checkpointed so a killed run resumes.

Each round, every group samples ``max(1, round(client_fraction · |group|))`` of its clients
(seeded by run seed, round and group), the pool trains them locally from the group's current
adapter, and the group's adapter becomes the average of the returned states weighted by the
clients' training windows. All groups' clients of a round go through the pool together.
Clients that fail (after retries) are left out of that round's average; a group whose
sampled clients all fail keeps its adapter for the round.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from safetensors.numpy import load_file, save_file

from ..config import FederatedConfig
from ..io import atomic_path, write_text
from .model import fedavg
from .pool import ActorPool

log = logging.getLogger(__name__)


@dataclass
class FedAvgRun:
    states: dict[str, dict[str, np.ndarray]]
    rounds: int = 0
    trained_windows: int = 0
    client_updates: int = 0
    failed_updates: int = 0
    peak_rss_mb: float = 0.0
    history: list[dict] = field(default_factory=list)


def round_seed(seed: int, rnd: int) -> int:
    """Local-training seed of a round; the same for every client (identical clients give identical states)."""
    return int(seed) * 100_003 + rnd


def sample_clients(clients: list[str], fraction: float, seed: int, rnd: int, group_index: int) -> list[str]:
    k = max(1, int(round(fraction * len(clients))))
    rng = np.random.default_rng([int(seed), rnd, group_index])
    return sorted(clients[i] for i in rng.choice(len(clients), size=min(k, len(clients)), replace=False))


def _save(path: Path, run: FedAvgRun) -> None:
    flat = {f"{g}::{k}": v for g, st in run.states.items() for k, v in st.items()}
    with atomic_path(path.with_suffix(".safetensors")) as tmp:
        save_file(flat, str(tmp))
    meta = {k: getattr(run, k) for k in ("rounds", "trained_windows", "client_updates", "failed_updates", "peak_rss_mb", "history")}
    write_text(path.with_suffix(".json"), json.dumps(meta, indent=1))


def load_run(path: Path) -> FedAvgRun | None:
    st, js = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not (st.is_file() and js.is_file()):
        return None
    states: dict[str, dict[str, np.ndarray]] = {}
    for key, v in load_file(str(st)).items():
        g, name = key.split("::", 1)
        states.setdefault(g, {})[name] = v
    return FedAvgRun(states=states, **json.loads(js.read_text()))


def run_fedavg(
    pool: ActorPool,
    groups: dict[str, list[str]],
    init: dict[str, np.ndarray],
    cfg: FederatedConfig,
    seed: int,
    checkpoint: Path,
    desc: str = "fedavg",
    on_round: Callable[[dict], None] | None = None,
) -> FedAvgRun:
    """Train one adapter per group by FedAvg for ``cfg.rounds`` rounds (resuming from ``checkpoint``)."""
    import ray

    run = load_run(checkpoint)
    if run is None or set(run.states) != set(groups):
        run = FedAvgRun(states={g: {k: v.copy() for k, v in init.items()} for g in groups})
    elif run.rounds:
        log.info("%s: resuming after round %d of %d", desc, run.rounds, cfg.rounds)
    names = list(groups)
    while run.rounds < cfg.rounds:
        rnd = run.rounds
        refs = {g: ray.put(run.states[g]) for g in names}
        items = []
        for gi, g in enumerate(names):
            for c in sample_clients(groups[g], cfg.client_fraction, seed, rnd, gi):
                items.append(((g, c), (c, refs[g], cfg.local_epochs, cfg.lr, round_seed(seed, rnd))))
        res = pool.map("update", items, desc=f"{desc} round {rnd + 1}/{cfg.rounds}")
        losses = []
        for gi, g in enumerate(names):
            got = [v for (gg, _), v in res.results.items() if gg == g]
            if got:
                run.states[g] = fedavg([v["state"] for v in got], [v["n"] for v in got])
                losses.extend(v["loss"] for v in got)
            else:
                log.warning("%s round %d: every sampled client of group %s failed; its adapter is unchanged", desc, rnd + 1, g)
        done = list(res.results.values())
        run.trained_windows += sum(v["trained_windows"] for v in done)
        run.client_updates += len(done)
        run.failed_updates += len(res.failed)
        run.peak_rss_mb = max([run.peak_rss_mb] + [v["peak_rss_mb"] for v in done])
        run.rounds += 1
        run.history.append({"round": run.rounds, "clients": len(done), "failed": len(res.failed),
                            "train_loss": float(np.mean(losses)) if losses else float("nan")})
        log.info("%s round %d/%d: %d clients, mean local train loss %.4f%s", desc, run.rounds, cfg.rounds, len(done),
                 run.history[-1]["train_loss"], f", {len(res.failed)} excluded" if res.failed else "")
        _save(checkpoint, run)
        if on_round is not None:
            on_round(run.history[-1])
    return run
