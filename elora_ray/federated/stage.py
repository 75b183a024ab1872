"""``elora federated``: FedAvg baselines and the federated EnsembleLoRA on many clients.

Methods (``federated.methods``), all with the configured adapter (paper: QLoRA):

- ``fedavg``: one adapter averaged over all clients for ``rounds`` rounds.
- ``mtl_ft``: that adapter, then each client fine-tunes it locally (``finetune_epochs``) and is
  tested with its own copy — "pre-train then fine-tune".
- ``ensemble``: projected gradients of every client's windows at θ* → k subset regressions →
  client affinity → m groups → one FedAvg adapter per group (same rounds and client fraction)
  → b linearised boosting learners on the groups with the highest training loss → per-group
  convex weights over the m group predictors, fit on the validation windows.

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
from safetensors.numpy import load_file, save_file

from ..config import RunConfig
from ..errors import ConfigError
from ..io import atomic_path, write_json
from ..layout import FED_DIR
from ..observe import log_metrics, sync_mlflow
from ..raysession import cluster_cpus, ensure_ray
from ..train.linearized import fit_residual
from .affinity import federated_l2
from .fedavg import FedAvgRun, run_fedavg
from .grouping import client_features, client_groups
from .journal import ClientProgress
from .pool import ActorPool
from .report import write_report
from .windows import _require_decoder, _source, prepare_windows
from .worker import ClientWorker

log = logging.getLogger(__name__)
FEDERATED_BOOST_KEYS = {"l2", "line_search", "step_size"}
"""The ``boost`` settings the federated ensemble uses (its number of steps is ``federated.boost_steps``);
only these enter its fingerprint, so changing another ``boost`` key does not block a resume."""
RHOS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def _fingerprint(cfg: RunConfig) -> dict:
    return {"model": cfg.model.model_dump(mode="json"), "adapter": cfg.adapter.model_dump(mode="json"),
            "federated": cfg.federated.model_dump(mode="json", exclude={"methods", "workers", "max_retries", "engine", "train_workers"}),
            "featurize_dim": cfg.featurize.dim, "estimate_l2": federated_l2(cfg),
            "affinity": cfg.estimate.affinity, "cluster": cfg.cluster.model_dump(mode="json", include={"max_groups", "select_m", "solver"}), "boost": cfg.boost.model_dump(mode="json", include=FEDERATED_BOOST_KEYS),
            "ensemble_weights": cfg.ensemble.weights, "seed": cfg.seed, "source": str(_source(cfg))}


def _chunks(xs: list, n: int) -> list[list]:
    return [xs[i : i + n] for i in range(0, len(xs), n)]


def _save_state(path: Path, state: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp))


def _evaluate(pool: ActorPool, clients: list[str], groups_terms: dict[str, list], assignment: dict[str, str],
              split: str = "test") -> tuple[dict[str, tuple[float, int]], float, int]:
    """Per-client (mean loss, windows) of each client's group prediction."""
    import ray

    items = []
    for g, terms in groups_terms.items():
        ref = ray.put(terms)
        members = [c for c in clients if assignment[c] == g]
        for k, chunk in enumerate(_chunks(members, 10)):
            items.append(((g, k), (chunk, split, ref)))
    res = pool.map("evaluate", items, desc=f"evaluate on {split}")
    per: dict[str, tuple[float, int]] = {}
    for v in res.results.values():
        per.update(v["per_client"])
    windows = sum(v["windows"] for v in res.results.values())
    peak = max([v["peak_rss_mb"] for v in res.results.values()] or [0.0])
    return per, peak, windows


def _method_row(per: dict[str, tuple[float, int]], clients: list[str], **extra) -> dict:
    vals = [per[c][0] for c in clients if c in per]
    n = [per[c][1] for c in clients if c in per]
    return {"test_loss": float(np.mean(vals)), "test_loss_pooled": float(np.average(vals, weights=n)),
            "clients_evaluated": len(vals), "per_client": {c: per[c][0] for c in clients if c in per}, **extra}


class _Run:
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
        write_json(fp_path, fp)
        self.meta = prepare_windows(cfg, self.fed)
        self.clients: list[str] = self.meta["clients"]
        ensure_ray(cfg.ray)
        self.workers = self.fcfg.workers or cluster_cpus()
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
                         max_retries=self.fcfg.max_retries)

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
        per, peak, _ = _evaluate(self.pool, self.clients, {"all": [(1.0, self.theta_star)]}, dict.fromkeys(self.clients, "all"))
        return self.record("base", _method_row(per, self.clients, train_flops=0.0, peak_memory_mb=peak,
                                               wall_s=time.perf_counter() - t0, adapters=0, adapter_parameters=0))

    def fedavg(self) -> dict:
        if (row := self.done("fedavg")) is not None:
            return row
        t0 = time.perf_counter()
        run = self.fedavg_all()
        _save_state(self.fed / "adapters" / "fedavg.safetensors", run.states["all"])
        wall = time.perf_counter() - t0
        per, peak, _ = _evaluate(self.pool, self.clients, {"all": [(1.0, run.states["all"])]}, dict.fromkeys(self.clients, "all"))
        return self.record("fedavg", _method_row(
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
        row = self.record("mtl_ft", _method_row(
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
        return self._grouped("ensemble", self.groups(feats), feats, feat_flops, t0)

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
        return self._grouped("random_groups", groups, feats, feat_flops, t0)

    def _grouped(self, method: str, groups: list[list[str]], feats: dict, feat_flops: float, t0: float) -> dict:
        """One FedAvg adapter per group, boosting, combination weights and evaluation; ``method`` names
        the artifacts (``ensemble``: adapters/group-*, boost.json, weights.json)."""
        import ray

        prefix, tag = ("group", "") if method == "ensemble" else ("random", "_random")
        gnames = [f"{prefix}-{i}" for i in range(len(groups))]
        assignment = {c: g for g, members in zip(gnames, groups) for c in members}
        # warm start: every group continues from the global FedAvg adapter, which is also a candidate
        # member of every group's combination (so an ensemble can always fall back to FedAvg)
        glob = self.fedavg_all() if self.fcfg.warm_start else None
        init = glob.states["all"] if glob is not None else self.theta_star
        run = self.run_fedavg(dict(zip(gnames, groups)), init, method, desc=f"{method} fedavg")
        for g in gnames:
            _save_state(self.fed / "adapters" / f"{g}.safetensors", run.states[g])
        extra_forward = 0
        # members[g]: the terms of group g's (boosted) predictor
        members: dict[str, list] = {g: [(1.0, run.states[g])] for g in gnames}
        boost_log = self._load_boost(members, tag)
        b = self.cfg.boost
        for step in range(len(boost_log), self.fcfg.boost_steps):
            res = self.pool.map("gold_log_odds", [(g, (clients, members[g])) for g, clients in zip(gnames, groups)],
                                desc=f"boosting step {step + 1}: group training losses")
            losses = {}
            for g, r in res.results.items():
                extra_forward += r["windows"] * len(members[g])
                losses[g] = (float(np.mean(np.logaddexp(0.0, -r["h"]))), r)
            worst = max(losses, key=lambda g: losses[g][0])
            clients = groups[gnames.index(worst)]
            h = losses[worst][1]
            g_feat = np.concatenate([feats[c]["g"] for c in clients])
            order = [s for c in clients for s in feats[c]["sample_id"]]
            pos = {s: i for i, s in enumerate(h["sample_id"])}
            if set(pos) != set(order):
                raise RuntimeError("boosting: residuals and features do not cover the same samples")
            hv = np.array([h["h"][pos[s]] for s in order])  # aligned by sample id
            resid = 1.0 - 1.0 / (1.0 + np.exp(-hv))
            w = fit_residual(g_feat, resid, b.l2)
            learner = self.pool.map("learner_state", [(0, (w,))]).results[0]
            delta = [(1.0, learner), (-1.0, self.theta_star)]
            if b.line_search:
                ls = self.pool.map("line_search", [(0, (clients, members[worst], delta, list(RHOS)))]).results[0]
                extra_forward += ls["windows"] * (len(members[worst]) + 2)
                rho = RHOS[int(np.argmin(ls["losses"]))]
                loss_after = min(ls["losses"])
            else:
                rho, loss_after = 1.0, float("nan")
            coef = b.step_size * rho
            k = len(boost_log)
            _save_state(self.fed / "adapters" / f"boost{tag}-{k}.safetensors", learner)
            boost_log.append({"step": k, "group": worst, "train_loss_before": losses[worst][0],
                              "train_loss_after_full_step": loss_after, "rho": rho, "coef": coef,
                              "fit_residual_mean": float(resid.mean())})
            write_json(self.fed / f"boost{tag}.json", boost_log)
            members[worst] += [(coef, learner), (-coef, self.theta_star)]
            log.info("federated boosting step %d: group %s (train loss %.4f), ρ=%.2f, coefficient %.3f",
                     k + 1, worst, losses[worst][0], rho, coef)
        # combination weights per group over the m group predictors (and the global FedAvg adapter when
        # groups start from it), on validation windows
        candidates = {**members, **({"fedavg": [(1.0, glob.states["all"])]} if glob is not None else {})}
        cnames = list(candidates)
        weights = {}
        if self.cfg.ensemble.weights == "learned" and len(cnames) > 1:
            ref = ray.put([candidates[h] for h in cnames])
            items = [(g, (clients, ref)) for g, clients in zip(gnames, groups)]
            res = self.pool.map("fit_weights", items, desc="combination weights")
            for g in gnames:
                if g in res.results:
                    weights[g] = res.results[g]["alpha"]
                    extra_forward += res.results[g]["windows"] * sum(len(t) for t in candidates.values())
        for g in gnames:
            weights.setdefault(g, [1.0 if h == g else (1.0 / len(cnames) if self.cfg.ensemble.weights == "uniform" else 0.0)
                                   for h in cnames])
        write_json(self.fed / f"weights{tag}.json", {"members": cnames, "weights": weights})
        terms = {g: [(a * c, s) for a, h in zip(weights[g], cnames) for c, s in candidates[h] if a > 1e-6] for g in gnames}
        wall = time.perf_counter() - t0
        if glob is not None and (fed_row := self.done("fedavg")) is not None:
            wall += fed_row["wall_s"]  # the global adapter was trained (and timed) by the fedavg method
        per, peak, _ = _evaluate(self.pool, self.clients, terms, assignment)
        own = {g: [(c, s) for c, s in members[g]] for g in gnames}
        per_own, _, _ = _evaluate(self.pool, self.clients, own, assignment)
        global_windows = glob.trained_windows if glob is not None else 0  # the warm start is part of the method
        flops = (feat_flops + (run.trained_windows + global_windows) * self.units["train"]
                 + extra_forward * self.units["forward"])
        n_boost = len(boost_log)
        return self.record(method, _method_row(
            per, self.clients, train_flops=flops, peak_memory_mb=max(run.peak_rss_mb, peak), wall_s=wall,
            adapters=len(cnames) + n_boost, adapter_parameters=self.adapter_parameters * (len(cnames) + n_boost),
            groups=len(gnames), boost=boost_log, client_updates=run.client_updates,
            excluded_updates=run.failed_updates,
            ablation_own_group_test_loss=_method_row(per_own, self.clients)["test_loss"],
            warm_start=glob is not None,
            weight_on_fedavg=(float(np.mean([weights[g][-1] for g in gnames])) if glob is not None else 0.0),
            flops_breakdown={"featurize": feat_flops, "global_fedavg": global_windows * self.units["train"],
                             "fedavg": run.trained_windows * self.units["train"],
                             "boost_and_weights_forward": extra_forward * self.units["forward"]}))

    def _load_boost(self, members: dict[str, list], tag: str = "") -> list[dict]:
        path = self.fed / f"boost{tag}.json"
        if not path.is_file() or self.force:
            return []
        steps = json.loads(path.read_text())
        for s in steps:
            learner = dict(load_file(str(self.fed / "adapters" / f"boost{tag}-{s['step']}.safetensors")))
            members[s["group"]] += [(s["coef"], learner), (-s["coef"], self.theta_star)]
        return steps


def federated_stage(cfg: RunConfig, run_dir: Path, force: bool = False) -> dict:
    """Run the configured methods (plus the untrained θ* reference) and write the report."""
    t0 = time.perf_counter()
    run = _Run(cfg, Path(run_dir), force)
    try:
        rows = {"base": run.base()}
        for name in cfg.federated.methods:
            rows[name] = getattr(run, name)()
    finally:
        run.pool.shutdown()
    report = write_report(cfg, run.fed, run.meta, run.workers, run.units, rows, time.perf_counter() - t0)
    return report


