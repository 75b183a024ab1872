"""The federated EnsembleLoRA after grouping: one FedAvg adapter per group, boosting, combination
weights and evaluation — functions of a running :class:`~.stage.FederatedRun`.

Boosting follows the main pipeline's rule (:mod:`elora_ray.boost.rule`: the group with the highest
training loss, residuals 1 − p, the linearised learner of :func:`elora_ray.train.linearized.fit_residual`,
ρ from the bounded line search, coefficient η·ρ) and the combination weights are the main pipeline's
(:func:`elora_ray.ensemble.weights.fit_task_weights`: same objective, ``ensemble.shrink`` towards the
group's own predictor, ``ensemble.solver``), one weight vector per group. Both are computed by the
client workers on a seeded sample of ≤ ``federated.weight_positions`` targets (a vocabulary-sized
output cannot be kept for every position).
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from safetensors.numpy import load_file

from ..boost.rule import residuals_from_log_odds, step_coefficient, worst_group
from ..io import write_json
from ..train.linearized import fit_residual
from .evaluation import evaluate, method_row, save_state

log = logging.getLogger(__name__)


def grouped(run, method: str, groups: list[list[str]], feats: dict, feat_flops: float, t0: float) -> dict:
    """One FedAvg adapter per group, boosting, combination weights and evaluation; ``method`` names
    the artifacts (``ensemble``: adapters/group-*, boost.json, weights.json; otherwise ``random``/``_random``)."""
    import ray

    prefix, tag = ("group", "") if method == "ensemble" else ("random", "_random")
    gnames = [f"{prefix}-{i}" for i in range(len(groups))]
    assignment = {c: g for g, members in zip(gnames, groups) for c in members}
    # warm start: every group continues from the global FedAvg adapter, which is also a candidate
    # member of every group's combination (so an ensemble can always fall back to FedAvg)
    glob = run.fedavg_all() if run.fcfg.warm_start else None
    init = glob.states["all"] if glob is not None else run.theta_star
    fed = run.run_fedavg(dict(zip(gnames, groups)), init, method, desc=f"{method} fedavg")
    for g in gnames:
        save_state(run.fed / "adapters" / f"{g}.safetensors", fed.states[g])
    # members[g]: the terms of group g's (boosted) predictor
    members: dict[str, list] = {g: [(1.0, fed.states[g])] for g in gnames}
    boost_log, extra_forward = boost(run, tag, gnames, groups, members, feats)
    # combination weights per group over the m group predictors (and the global FedAvg adapter when
    # groups start from it), on validation windows
    candidates = {**members, **({"fedavg": [(1.0, glob.states["all"])]} if glob is not None else {})}
    cnames = list(candidates)
    weights: dict[str, list[float]] = {}
    e = run.cfg.ensemble
    if e.weights == "learned" and len(cnames) > 1:
        ref = ray.put([candidates[h] for h in cnames])
        items = [(g, (clients, ref, cnames.index(g))) for g, clients in zip(gnames, groups)]
        res = run.pool.map("fit_weights", items, desc="combination weights")
        for g in gnames:
            if g in res.results:
                weights[g] = res.results[g]["alpha"]
                extra_forward += res.results[g]["windows"] * sum(len(t) for t in candidates.values())
    for g in gnames:  # uniform, own group, or a group whose clients have no validation windows
        weights.setdefault(g, [1.0 if h == g else (1.0 / len(cnames) if e.weights == "uniform" else 0.0) for h in cnames])
    write_json(run.fed / f"weights{tag}.json", {"members": cnames, "weights": weights})
    terms = {g: [(a * c, s) for a, h in zip(weights[g], cnames) for c, s in candidates[h] if a > 1e-6] for g in gnames}
    wall = time.perf_counter() - t0
    if glob is not None and (fed_row := run.done("fedavg")) is not None:
        wall += fed_row["wall_s"]  # the global adapter was trained (and timed) by the fedavg method
    per, peak, _ = evaluate(run.pool, run.clients, terms, assignment)
    per_own, _, _ = evaluate(run.pool, run.clients, {g: list(members[g]) for g in gnames}, assignment)
    global_windows = glob.trained_windows if glob is not None else 0  # the warm start is part of the method
    flops = feat_flops + (fed.trained_windows + global_windows) * run.units["train"] + extra_forward * run.units["forward"]
    n_boost = len(boost_log)
    return run.record(method, method_row(
        per, run.clients, train_flops=flops, peak_memory_mb=max(fed.peak_rss_mb, peak), wall_s=wall,
        adapters=len(cnames) + n_boost, adapter_parameters=run.adapter_parameters * (len(cnames) + n_boost),
        groups=len(gnames), boost=boost_log, client_updates=fed.client_updates,
        excluded_updates=fed.failed_updates,
        ablation_own_group_test_loss=method_row(per_own, run.clients)["test_loss"],
        warm_start=glob is not None,
        weight_on_fedavg=(float(np.mean([weights[g][-1] for g in gnames])) if glob is not None else 0.0),
        flops_breakdown={"featurize": feat_flops, "global_fedavg": global_windows * run.units["train"],
                         "fedavg": fed.trained_windows * run.units["train"],
                         "boost_and_weights_forward": extra_forward * run.units["forward"]}))


def boost(run, tag: str, gnames: list[str], groups: list[list[str]], members: dict[str, list],
          feats: dict) -> tuple[list[dict], int]:
    """``federated.boost_steps`` steps of the boosting rule, appended to ``members`` (resumed from
    ``boost{tag}.json``); returns the step log and the windows forwarded."""
    boost_log = load_boost(run, members, tag)
    b = run.cfg.boost
    forwarded = 0
    for step in range(len(boost_log), run.fcfg.boost_steps):
        res = run.pool.map("gold_log_odds", [(g, (clients, members[g])) for g, clients in zip(gnames, groups)],
                           desc=f"boosting step {step + 1}: group training losses")
        forwarded += sum(r["windows"] * len(members[g]) for g, r in res.results.items())
        losses = [float(np.mean(res.results[g]["loss"])) for g in gnames]
        j = worst_group(losses)
        worst, clients, h = gnames[j], groups[j], res.results[gnames[j]]
        g_feat = np.concatenate([feats[c]["g"] for c in clients])
        order = [s for c in clients for s in feats[c]["sample_id"]]
        pos = {s: i for i, s in enumerate(h["sample_id"])}
        if set(pos) != set(order):
            raise RuntimeError("boosting: residuals and features do not cover the same samples")
        resid = residuals_from_log_odds(np.array([h["h"][pos[s]] for s in order]))  # aligned by sample id
        learner = run.pool.map("learner_state", [(0, (fit_residual(g_feat, resid, b.l2),))]).results[0]
        delta = [(1.0, learner), (-1.0, run.theta_star)]
        if b.line_search:
            ls = run.pool.map("line_search", [(0, (clients, members[worst], delta))]).results[0]
            forwarded += ls["windows"] * (len(members[worst]) + 2)
            rho, coef, after = ls["rho"], ls["coef"], ls["loss_after"]
        else:
            (rho, coef), after = step_coefficient(b, lambda r: float("nan")), float("nan")
        k = len(boost_log)
        save_state(run.fed / "adapters" / f"boost{tag}-{k}.safetensors", learner)
        boost_log.append({"step": k, "group": worst, "group_train_losses_before": losses, "train_loss_before": losses[j],
                          "train_loss_after_on_sampled_targets": after, "rho": rho, "coef": coef,
                          "residual_mean": float(resid.mean())})
        write_json(run.fed / f"boost{tag}.json", boost_log)
        members[worst] += [(coef, learner), (-coef, run.theta_star)]
        log.info("federated boosting step %d: group %s (train loss %.4f), ρ=%.3g, coefficient %.3g", k + 1, worst,
                 losses[j], rho, coef)
    return boost_log, forwarded


def load_boost(run, members: dict[str, list], tag: str = "") -> list[dict]:
    """The finished boosting steps of ``boost{tag}.json``, their learners appended to ``members``."""
    path = run.fed / f"boost{tag}.json"
    if not path.is_file() or run.force:
        return []
    steps = json.loads(path.read_text())
    for s in steps:
        learner = dict(load_file(str(run.fed / "adapters" / f"boost{tag}-{s['step']}.safetensors")))
        members[s["group"]] += [(s["coef"], learner), (-s["coef"], run.theta_star)]
    return steps
