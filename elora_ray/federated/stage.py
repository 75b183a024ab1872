"""``elora federated``: FedAvg baselines and the federated EnsembleLoRA on many clients.

Methods (``federated.methods``), all with the configured adapter (paper: QLoRA):

- ``fedavg``: one adapter averaged over all clients for ``rounds`` rounds.
- ``mtl_ft``: that adapter, then each client fine-tunes it locally (``finetune_epochs``) and is
  tested with its own copy — "pre-train then fine-tune".
- ``ensemble``: projected gradients of every client's windows at θ* → k subset regressions →
  client affinity → m groups → one FedAvg adapter per group (same rounds and client fraction)
  → b linearised boosting learners on the groups with the highest training loss → per-group
  convex weights over the m group predictors, fit on the validation windows. Boosting and the
  weights are the main pipeline's rule and solver (:mod:`.ensemble`).

Everything lands in ``<out>/federated/``: ``windows.parquet`` + ``clients.json`` (the client
rule's result), ``features.parquet``, ``affinity.csv``, ``groups.json``, ``adapters/*.safetensors``,
FedAvg checkpoints per round, ``methods/<name>.json``, ``per_client.csv``, ``report.json``,
``report.md`` and ``plots/federated_test_loss.png``. Every step is skipped when its artifact
exists, so a killed run resumes (FedAvg from its last finished round).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..models.precision import fingerprint_part, model_fingerprint
from ..cluster.kernel import scaling_for
from ..cluster.select import resolve_select_m
from ..config import RunConfig
from ..errors import ConfigError
from ..io import write_json
from ..layout import FED_DIR
from ..models.placement import gpu_share
from ..observe import log_metrics, sync_mlflow
from ..raysession import cluster_cpus, cluster_gpus, ensure_ray
from .affinity import federated_l2
from .ensemble import grouped
from .evaluation import evaluate, method_row, save_state
from .fedavg import FedAvgRun, run_fedavg
from .grouping import client_features, client_groups
from .journal import ClientProgress
from .pool import ActorPool
from .report import write_report
from .windows import _require_decoder, _source, prepare_windows
from .worker import ClientWorker

log = logging.getLogger(__name__)
FEDERATED_BOOST_KEYS = {"method", "l2", "line_search", "step_size"}
"""The ``boost`` settings the federated ensemble uses (its number of steps is ``federated.boost_steps``);
only these enter its fingerprint, so changing another ``boost`` key does not block a resume."""


def _cluster_fingerprint(cfg: RunConfig) -> dict:
    """The clustering settings that shape the groups, with ``select_m`` as the rule it resolves to: clients
    have independent affinity halves (except the ``paper`` kind, which has none), so ``auto`` is ``heldout``
    here and a run made with either spelling stays current."""
    part = cfg.cluster.model_dump(mode="json", include={"max_groups", "select_m", "solver"})
    part["select_m"] = resolve_select_m(part["select_m"], halves_independent=cfg.estimate.affinity != "paper")
    # local scaling shapes the groups unless the held-out rule chooses m (it uses the affinity as given);
    # recorded only when it applies, so held-out runs made before the setting existed stay current
    scaling = scaling_for(cfg.estimate.affinity, cfg.cluster.local_scaling)
    if scaling is not None and not (cfg.federated.num_groups == "auto" and part["select_m"] == "heldout"):
        part["local_scaling"] = scaling
    return part


def _fingerprint(cfg: RunConfig) -> dict:
    return {"model": model_fingerprint(cfg.model), "adapter": cfg.adapter.model_dump(mode="json"),
            "federated": cfg.federated.model_dump(mode="json", exclude={"methods", "workers", "max_retries", "engine", "train_workers",
                                                                         "gpus_per_worker"}),
            "featurize_dim": cfg.featurize.dim, "estimate_l2": federated_l2(cfg),
            "affinity": cfg.estimate.affinity, "cluster": _cluster_fingerprint(cfg), "boost": cfg.boost.model_dump(mode="json", include=FEDERATED_BOOST_KEYS),
            "ensemble": cfg.ensemble.model_dump(mode="json"), "seed": cfg.seed, "source": str(_source(cfg)),
            **fingerprint_part(cfg.compute.precision)}


def client_pool_resources(cfg: RunConfig) -> tuple[int, float]:
    """(actors, GPU share each) of the client pool. Actors: ``federated.workers``, else sized by GPUs
    and memory (:func:`~elora_ray.models.placement.client_pool_size`), not by CPUs. Share
    (``federated.gpus_per_worker: auto`` on GPUs): the plan's (:func:`elora_ray.plan.planned_gpu_share`,
    several small clients per GPU) when the pool is sized here and the GPU's memory is known, else the
    GPUs shared evenly by the actors (:func:`~elora_ray.models.placement.gpu_share`)."""
    from ..models.placement import client_pool_size
    from ..plan import NodeShape, build_plan, planned_gpu_share

    f = cfg.federated
    cpus, gpus = cluster_cpus(), cluster_gpus()
    packed = planned_gpu_share(cfg, "federated") if f.gpus_per_worker == "auto" and gpus and not f.workers else 1.0
    setting = packed if packed < 1 else f.gpus_per_worker
    if f.workers:
        size = f.workers
    else:
        here = NodeShape.this_machine()
        actor = next(s for s in build_plan(cfg, here).stages if s.stage == "featurize")
        size = client_pool_size(None, setting, cpus, gpus, here.host_bytes, actor.host_peak_bytes)
        log.info("federated: %d client actors (%d CPUs, %d GPUs, ~%.1f GiB of host memory per actor)", size, cpus, gpus,
                 actor.host_peak_bytes / 2**30)
    return size, gpu_share(setting, size, gpus)


class FederatedRun:
    def __init__(self, cfg: RunConfig, run_dir: Path, force: bool) -> None:
        self.cfg, self.fcfg = cfg, cfg.federated
        self.run_dir = Path(run_dir)
        self.fed = self.run_dir / FED_DIR
        self.force = force
        self.fed.mkdir(parents=True, exist_ok=True)
        fp = _fingerprint(cfg)
        fp_path = self.fed / "config.json"
        if fp_path.is_file() and json.loads(fp_path.read_text()) != json.loads(json.dumps(fp)):
            if not force:
                raise ConfigError(
                    f"{self.fed} was made with a different federated configuration; use a new --out "
                    "or --force to start over")
            import shutil

            shutil.rmtree(self.fed)
            self.fed.mkdir(parents=True)
        _require_decoder(cfg)
        if cfg.ensemble.weights == "shrunk":
            raise ConfigError("federated: ensemble.weights=shrunk is fitted per task on the main pipeline's validation "
                              "outputs; the federated ensemble takes learned, uniform or own_group")
        if cfg.boost.method != "linearized" and cfg.federated.boost_steps > 0:
            raise ConfigError("federated: boosting learners are linearised (boost.method=linearized); "
                              f"boost.method={cfg.boost.method} is for the main pipeline only — set "
                              "boost.method=linearized or federated.boost_steps=0")
        write_json(fp_path, fp)
        self.meta = prepare_windows(cfg, self.fed)
        self.clients: list[str] = self.meta["clients"]
        ensure_ray(cfg.ray)
        self.workers, self.gpus_per_actor = client_pool_resources(cfg)
        self.pool = self._new_pool()
        info = self.pool.broadcast("info")[0]
        self.theta_star: dict[str, np.ndarray] = info["theta_star"]
        self.units: dict[str, float] = info["flops_per_window"]
        self.adapter_parameters = int(info["adapter_parameters"])
        log.info("federated: %d client workers; adapter %s with %d parameters; FLOPs per window: train %.3g, "
                 "forward %.3g, featurize %.3g", self.pool.size, cfg.adapter.type, self.adapter_parameters,
                 self.units["train"], self.units["forward"], self.units["featurize"])

    def _new_pool(self) -> ActorPool:
        return ActorPool(ClientWorker, (self.cfg.model_dump(mode="json"), str(self.fed / "windows.parquet")), self.workers,
                         num_gpus=self.gpus_per_actor, max_retries=self.fcfg.max_retries)

    def done(self, name: str) -> dict | None:
        p = self.fed / "methods" / f"{name}.json"
        return None if self.force or not p.is_file() else json.loads(p.read_text())

    def record(self, name: str, row: dict) -> dict:
        write_json(self.fed / "methods" / f"{name}.json", row)
        log_metrics(self.run_dir, f"federated/methods/{name}", row, 0, self.cfg.report_to)
        sync_mlflow(self.run_dir, self.cfg)
        return row

    def on_round(self, scope: str):
        """Per-round metrics (clients, failures, mean local training loss) for ``report_to``."""
        def log_round(entry: dict) -> None:
            log_metrics(self.run_dir, f"federated/{scope}", entry, entry["round"], self.cfg.report_to)
            sync_mlflow(self.run_dir, self.cfg)
        return log_round

    # ---------------------------------------------------------------- baselines
    def run_fedavg(self, groups: dict[str, list[str]], init: dict[str, np.ndarray], name: str, desc: str) -> FedAvgRun:
        """FedAvg of each group from ``init`` on the configured engine (checkpointed per round, resumable)."""
        if self.fcfg.engine == "actors":
            return run_fedavg(self.pool, groups, init, self.fcfg, self.cfg.seed, self.fed / "checkpoints" / name,
                              desc=desc, on_round=self.on_round(name))
        from .train_fedavg import run_fedavg_ray_train

        done = self.fed / "checkpoints" / f"{name}-ray_train" / "done.json"
        self.pool.shutdown()  # the trainers need the CPUs the pool's actors hold
        try:
            run = run_fedavg_ray_train(self.cfg, groups, init, self.fed, done.parent, desc=desc)
        finally:
            self.pool = self._new_pool()
        if not done.is_file():
            for entry in run.history:
                self.on_round(name)(entry)
            write_json(done, {"rounds": run.rounds})
        return run

    def fedavg_all(self) -> FedAvgRun:
        return self.run_fedavg({"all": self.clients}, self.theta_star, "fedavg", desc="fedavg")

    def base(self) -> dict:
        if (row := self.done("base")) is not None:
            return row
        t0 = time.perf_counter()
        per, peak, _ = evaluate(self.pool, self.clients, {"all": [(1.0, self.theta_star)]}, dict.fromkeys(self.clients, "all"))
        return self.record("base", method_row(per, self.clients, train_flops=0.0, peak_memory_mb=peak,
                                               wall_s=time.perf_counter() - t0, adapters=0, adapter_parameters=0))

    def fedavg(self) -> dict:
        if (row := self.done("fedavg")) is not None:
            return row
        t0 = time.perf_counter()
        run = self.fedavg_all()
        save_state(self.fed / "adapters" / "fedavg.safetensors", run.states["all"])
        wall = time.perf_counter() - t0
        per, peak, _ = evaluate(self.pool, self.clients, {"all": [(1.0, run.states["all"])]}, dict.fromkeys(self.clients, "all"))
        return self.record("fedavg", method_row(
            per, self.clients, train_flops=run.trained_windows * self.units["train"],
            peak_memory_mb=max(run.peak_rss_mb, peak), wall_s=wall, adapters=1,
            adapter_parameters=self.adapter_parameters, client_updates=run.client_updates,
            excluded_updates=run.failed_updates, history=run.history))

    def mtl_ft(self) -> dict:
        import ray

        if (row := self.done("mtl_ft")) is not None:
            return row
        t0 = time.perf_counter()
        run = self.fedavg_all()  # resumes from (or reuses) the fedavg checkpoint
        ref = ray.put(run.states["all"])
        f = self.fcfg
        progress = ClientProgress(self.fed / "progress" / "mtl_ft.jsonl", reset=self.force)
        items = [(c, (c, ref, f.finetune_epochs, f.lr, self.cfg.seed)) for c in self.clients if c not in progress.done]
        if progress.done:
            log.info("mtl_ft: resuming, %d of %d clients already fine-tuned and evaluated", len(progress.done), len(self.clients))
        res = self.pool.map("finetune_evaluate", items, desc="mtl_ft: per-client fine-tuning", on_result=progress.add)
        results = {**progress.done, **res.results}
        per = {c: (v["loss"], v["n"]) for c, v in results.items()}
        windows = run.trained_windows + sum(v["trained_windows"] for v in results.values())
        peak = max([run.peak_rss_mb] + [v["peak_rss_mb"] for v in results.values()])
        row = self.record("mtl_ft", method_row(
            per, self.clients, train_flops=windows * self.units["train"], peak_memory_mb=peak,
            wall_s=time.perf_counter() - t0 + progress.seconds_before, adapters=1 + len(results),
            adapter_parameters=self.adapter_parameters * (1 + len(results)), excluded_clients=sorted(res.failed)))
        return row

    # ---------------------------------------------------------------- ensemble
    def features(self) -> tuple[dict[str, dict], float, int]:
        return client_features(self)

    def groups(self, feats: dict[str, dict]) -> list[list[str]]:
        return client_groups(self, feats)

    def ensemble(self) -> dict:
        if (row := self.done("ensemble")) is not None:
            return row
        t0 = time.perf_counter()
        feats, feat_flops, _ = self.features()
        return grouped(self, "ensemble", self.groups(feats), feats, feat_flops, t0)

    def random_groups(self) -> dict:
        """Control: the ensemble's procedure on random groups of the same sizes (seeded)."""
        if (row := self.done("random_groups")) is not None:
            return row
        t0 = time.perf_counter()
        feats, feat_flops, _ = self.features()
        sizes = [len(g) for g in self.groups(feats)]
        order = list(np.random.default_rng([self.cfg.seed, 7]).permutation(self.clients))
        groups, at = [], 0
        for k in sizes:
            groups.append(sorted(order[at : at + k]))
            at += k
        write_json(self.fed / "random_groups.json", {"groups": groups, "sizes": sizes})
        return grouped(self, "random_groups", groups, feats, feat_flops, t0)


def federated_stage(cfg: RunConfig, run_dir: Path, force: bool = False) -> dict:
    """Run the configured methods (plus the untrained θ* reference) and write the report."""
    t0 = time.perf_counter()
    run = FederatedRun(cfg, Path(run_dir), force)
    try:
        rows = {"base": run.base()}
        for name in cfg.federated.methods:
            rows[name] = getattr(run, name)()
    finally:
        run.pool.shutdown()
    report = write_report(cfg, run.fed, run.meta, run.workers, run.units, rows, time.perf_counter() - t0)
    return report


