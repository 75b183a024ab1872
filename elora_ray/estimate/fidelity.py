"""``elora fidelity``: how well the linearised estimate predicts real fine-tuning.

For ``fidelity.num_subsets`` seeded task subsets S (one Ray task each) we really fine-tune the
adapter from θ* (same seed, probed heads frozen — exactly the model the linearisation
describes) on S's training samples and measure, for each i ∈ S, the validation loss and
accuracy f_i(S). Against them we put the estimate f̂_i(S) from the projected features, and
report (paper Table 3 / Table 5):

(a) first-order error of h: h_X(s, y) of the fine-tuned adapter vs h0 + ∇h(θ*)ᵀ(X − θ*)
    with the *unprojected* gradient, on validation samples, with the relative distance
    ‖X − θ*‖ / ‖θ_full‖;
(b) relative error |f̂ − f| / f of the loss and of the accuracy (the accuracy estimated with the
    calibrated margin noise σ, and for every σ of ``MARGIN_NOISE_GRID``), Spearman correlations
    (over all (S, i), within each task across subsets, and of the changes f − f(θ*)); with
    ``fidelity.repeats`` > 1, the same against a second fine-tune and against the mean of both;
(c) cost: FLOPs and wall time of featurize + regressions vs fine-tuning the same subsets,
    and linearly extrapolated to ``estimate.num_subsets`` subsets.

Writes ``fidelity/results.parquet``, ``fidelity/summary.json``, ``fidelity/summary.md`` and
``plots/fidelity.png`` under the run directory.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import log_expit
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from ..artifacts import read_data_manifest
from ..config import RunConfig
from ..featurize.stage import theta_star_fingerprint
from ..featurize.store import read_manifest
from ..io import write_json, write_parquet, write_text
from ..layout import RunLayout
from ..raysession import ensure_ray
from .calibration import MARGIN_NOISE_GRID, calibration_constant, margin_noise, regularisation
from .fidelity_report import plot_fidelity, render_summary
from .stage import load_estimation_features, subset_plan
from .subsets import default_subset_size, sample_subsets
from .surrogate import expected_accuracy, fit_surrogate

log = logging.getLogger(__name__)
L2_GRID = (1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
#: Calibration constants tried around the current one (``l2: auto``): c × these.
C_MULTIPLIERS = (1 / 16, 1 / 4, 1 / 2, 1.0, 2.0, 4.0, 16.0)


def finetune_subset(cfg_data: dict, run_dir: str, members: list[str], seed: int) -> dict:
    """Really fine-tune on ``members`` from θ*; return per-task validation metrics and the
    first-order check. Runs in a Ray task (or locally)."""
    import torch

    from ..artifacts import read_prepared
    from ..featurize.gradients import PerSampleGradients, gold_log_odds
    from ..featurize.model_at_init import build_model_at_init
    from ..featurize.worker import gradient_layers_for
    from ..models.classifier import TaskSpec
    from ..train.loop import fit_adapter
    from ..train.predict import evaluate_examples

    from ..models.placement import reserved_gpu_ids, worker_device

    torch.set_num_threads(1)
    cfg = RunConfig.model_validate(cfg_data)
    run = Path(run_dir)
    tasks = read_prepared(run)
    by_name = {t.name: t for t in tasks}
    heads = RunLayout(run).heads
    # a task that reserved (a share of) a GPU (train.use_gpu, train.gpus_per_worker) works there
    device = worker_device(bool(reserved_gpu_ids()), "a fidelity fine-tuning task")
    peft_model, model = build_model_at_init(cfg, [TaskSpec.of(t) for t in tasks], heads if heads.is_file() else None,
                                            device)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    full_norm = float(torch.sqrt(sum((p.detach().float() ** 2).sum() for p in peft_model.parameters())))
    start = {n: p.detach().clone() for n, p in peft_model.named_parameters() if n in trainable}

    # Unprojected per-sample gradients at θ* on the validation samples (first-order check).
    layers = gradient_layers_for(peft_model)
    val_rows = [(m, e) for m in members for e in by_name[m].splits["validation"]]
    g_full, h0 = [], []
    for i in range(0, len(val_rows), 32):
        chunk = val_rows[i : i + 32]
        enc = model.tokenize([n for n, _ in chunk], [e.text for _, e in chunk], [e.text_pair for _, e in chunk])
        enc = {k: v.to(device) for k, v in enc.items()}
        labels = torch.tensor([by_name[n].label_id(e.label) for n, e in chunk], device=device)
        with PerSampleGradients(layers) as psg:
            h = gold_log_odds(peft_model(**enc), labels)
            g_full.append(psg.backward(h).cpu().numpy())
        h0.append(h.detach().cpu().numpy())
    g_full_arr, h0_arr = np.concatenate(g_full), np.concatenate(h0)
    layer_params = []
    for g in layers:
        layer_params.append(g.module.weight)
        if g.module.bias is not None:
            layer_params.append(g.module.bias)
    theta_star = torch.cat([p.detach().reshape(-1).clone() for p in layer_params])
    for n, p in peft_model.named_parameters():
        p.requires_grad_(n in trainable)
    peft_model.zero_grad(set_to_none=True)

    train_rows = [(m, e) for m in members for e in by_name[m].splits["train"]]
    f = cfg.fidelity
    stats = fit_adapter(peft_model, model, by_name, train_rows, epochs=f.epochs, lr=f.lr, batch_size=f.batch_size, seed=seed,
                        device=device)
    after = evaluate_examples(peft_model, model, by_name, val_rows, device=device)
    delta = (torch.cat([p.detach().reshape(-1) for p in layer_params]) - theta_star).cpu().numpy()
    h_lin = h0_arr + g_full_arr.astype(np.float64) @ delta
    h_true = after["h"].astype(np.float64)
    dist = float(torch.sqrt(sum(((p.detach() - start[n]) ** 2).sum() for n, p in peft_model.named_parameters() if n in trainable)))
    task_of = np.array([n for n, _ in val_rows])
    rows = []
    for m in members:
        sel = task_of == m
        rows.append({
            "task": m,
            "true_loss": float(-log_expit(h_true[sel]).mean()),
            "true_accuracy": float(after["correct"][sel].mean()),
            "true_loss0": float(-log_expit(h0_arr[sel]).mean()),
            "rss_h": float(((h_true[sel] - h_lin[sel]) ** 2).sum()),
            "ss_h": float((h_true[sel] ** 2).sum()),
            "ss_change": float(((h_true[sel] - h0_arr[sel]) ** 2).sum()),
        })
    return {
        "members": members, "rows": rows, "train_flops": stats.flops, "train_seconds": stats.seconds,
        "train_samples": stats.samples, "steps": stats.steps, "relative_distance": dist / full_norm,
        "final_train_loss": float(np.mean(stats.losses[-10:])),
    }


def repeat_seed(seed: int, sid: int, r: int) -> int:
    """Seed of the r-th repeat (r ≥ 1) of subset ``sid``: far from every first-run seed."""
    return seed + sid + 100_003 * r


def noise_ceiling(table: pd.DataFrame, repeats: dict[tuple[int, int], dict],
                  est_accuracy: pd.Series | None = None) -> dict | None:
    """How well one real fine-tuning predicts another of the same subset (different seed).

    Compares the first run's validation losses with repeat 1's: Spearman overall and within each
    task across subsets (the ceiling for the estimate's within-task Spearman), and the mean
    relative differences of the loss and of the accuracy (the floors for the estimate's relative
    errors: one real run predicts another of the same subset no better). None without repeats.
    With ``est_accuracy`` (aligned with ``table``), also the estimate's accuracy relative error against
    the repeat and against the mean of both runs: the seed's noise in one run is part of the paper's
    error; the mean of two runs halves its variance.
    """
    other = {(sid, row["task"]): (row["true_loss"], row["true_accuracy"])
             for (sid, r), data in repeats.items() if r == 1 for row in data["rows"]}
    if not other:
        return None
    t = table[["subset_id", "task", "true_loss", "true_accuracy"]].copy()
    if est_accuracy is not None:
        t["est_accuracy"] = est_accuracy.to_numpy()
    pairs = [other.get((sid, task), (np.nan, np.nan)) for sid, task in zip(t["subset_id"], t["task"])]
    t["repeat_loss"] = [p[0] for p in pairs]
    t["repeat_accuracy"] = [p[1] for p in pairs]
    t = t.dropna()
    within = [spearmanr(g["true_loss"], g["repeat_loss"]).statistic for _, g in t.groupby("task")
              if len(g) >= 3 and g["true_loss"].nunique() > 1 and g["repeat_loss"].nunique() > 1]
    extra = {}
    if est_accuracy is not None and len(t):
        mean_acc = (t["true_accuracy"] + t["repeat_accuracy"]) / 2
        extra = {
            "accuracy_relative_error_vs_repeat": float(((t["est_accuracy"] - t["repeat_accuracy"]).abs()
                                                        / t["repeat_accuracy"].clip(lower=1e-9)).mean()),
            "accuracy_relative_error_vs_mean": float(((t["est_accuracy"] - mean_acc).abs() / mean_acc.clip(lower=1e-9)).mean()),
        }
    return {
        "pairs": int(len(t)),
        "spearman": float(spearmanr(t["true_loss"], t["repeat_loss"]).statistic) if len(t) > 2 else None,
        "spearman_within_task": float(np.nanmean(within)) if within else None,
        "relative_difference": float(((t["true_loss"] - t["repeat_loss"]).abs() / t["true_loss"]).mean()),
        "accuracy_relative_difference": float(((t["true_accuracy"] - t["repeat_accuracy"]).abs()
                                               / t["true_accuracy"].clip(lower=1e-9)).mean()),
        **extra,
    }


def run_fidelity(cfg: RunConfig, run_dir: Path, progress: bool = True, *, out_name: str = "fidelity",
                 constants: list[float] | None = None) -> dict:
    """Fine-tune ``fidelity.num_subsets`` subsets for real and compare with the estimate.

    ``out_name``: the folder under the run directory (and plot name); ``constants``: the calibration
    constants c of ``l2: auto`` to sweep (default: the current one × ``C_MULTIPLIERS``)."""
    feat = read_manifest(run_dir)
    names, feats = load_estimation_features(run_dir)
    f = cfg.fidelity
    n = len(names)
    size = default_subset_size(n) if f.subset_size == "auto" else int(f.subset_size)
    seed = f.seed if f.seed is not None else cfg.seed + 7919
    subsets = sample_subsets(n, f.num_subsets, size, seed)
    members = [[names[i] for i in s] for s in subsets]
    out = run_dir / out_name

    # Estimated side: every fixed λ of the grid and every calibration constant c of the ``l2: auto`` rule
    # (λ_S follows the fine-tuning measured here: fidelity.lr / epochs / batch_size and N_S), in seconds.
    # The configured one (estimate.l2, or the auto rule with the current constant) is the headline.
    constant, constant_source = calibration_constant(cfg, run_dir)
    sigma, sigma_source = margin_noise(cfg, run_dir)
    sigmas = sorted({*MARGIN_NOISE_GRID, sigma})
    variants: dict[str, tuple[str, float]] = {f"{l2:g}": ("fixed", l2) for l2 in L2_GRID}
    for c in constants if constants is not None else [constant * mult for mult in C_MULTIPLIERS]:
        variants[f"c={c:.3g}"] = ("auto", c)
    key = f"{cfg.estimate.l2:g}" if cfg.estimate.l2 != "auto" else f"c={constant:.3g}"
    if key not in variants:
        variants[key] = ("auto", constant) if cfg.estimate.l2 == "auto" else ("fixed", float(cfg.estimate.l2))
    est: dict[str, list[dict]] = {v: [] for v in variants}
    t_est = time.perf_counter()
    solver_flops = 0.0
    for sid, mem in enumerate(members):
        g = np.concatenate([feats[m][0] for m in mem])
        h0 = np.concatenate([feats[m][1] for m in mem])
        for v, (kind, value) in variants.items():
            l2 = value if kind == "fixed" else regularisation(value, len(h0), f.lr, f.epochs, f.batch_size)
            fit = fit_surrogate(g, h0, l2=l2, max_iter=cfg.estimate.max_iter)
            if v == key:
                solver_flops += 4.0 * g.shape[0] * g.shape[1] * max(1, fit.iterations + 1)
            for m in mem:
                margin = feats[m][3].astype(np.float64) + feats[m][2].astype(np.float64) @ fit.w  # once for every σ
                accs = {sg: expected_accuracy(margin, sg) for sg in sigmas}
                est[v].append({"subset_id": sid, "task": m, "est_loss": float(-log_expit(margin).mean()),
                               "est_accuracy": accs[sigma], **{f"acc~{sg:g}": accs[sg] for sg in sigmas}})
    est_solve_s = (time.perf_counter() - t_est) / len(variants)

    # Real side: one Ray task per subset.
    ensure_ray(cfg.ray)
    import ray

    from ..train.runner import resolve_use_gpu, train_gpu_share

    # one CPU each, and train.gpus_per_worker of a GPU when training uses GPUs (auto: a training job's share)
    gpus = train_gpu_share(cfg) if resolve_use_gpu(cfg) else 0.0
    remote = ray.remote(num_cpus=1, max_retries=1, **({"num_gpus": gpus} if gpus else {}))(finetune_subset)
    cfg_data = cfg.model_dump(mode="json")
    # Each finished subset is kept (keyed by θ*, fine-tuning settings, members, seed), so an
    # interrupted run resumes, and a rerun with another surrogate λ or projection dim d (same θ*)
    # reuses the real fine-tuning. Entries keyed by the features fingerprint (before θ* keys) are
    # accepted when they match this run's features, and re-keyed.
    settings = {k: getattr(f, k) for k in ("epochs", "lr", "batch_size")}
    data_fp = read_data_manifest(run_dir)["fingerprint"]
    tag = json.dumps({"theta_star": theta_star_fingerprint(cfg, data_fp), "fidelity": settings}, sort_keys=True)
    legacy_tag = json.dumps({"features": feat["fingerprint"], "fidelity": settings}, sort_keys=True)
    real: dict[int, dict] = {}
    for sid, mem in enumerate(members):
        cached = out / "real" / f"subset-{sid:04d}.json"
        if cached.is_file():
            data = json.loads(cached.read_text())
            if data.get("tag") in (tag, legacy_tag) and data["members"] == mem and data.get("seed") == seed + sid:
                if data["tag"] != tag:
                    data["tag"] = tag
                    write_json(cached, data)
                real[sid] = data
    if real:
        log.info("fidelity: reusing %d fine-tuned subset(s) from %s", len(real), out / "real")
    # Repeats (fidelity.repeats > 1): the same subset fine-tuned again with another seed; the
    # disagreement between repeats is the noise ceiling of any estimate (``noise_ceiling`` below).
    repeat: dict[tuple[int, int], dict] = {}
    for sid, mem in enumerate(members):
        for r in range(1, f.repeats):
            cached = out / "real" / f"subset-{sid:04d}-repeat{r}.json"
            if cached.is_file():
                data = json.loads(cached.read_text())
                if data.get("tag") == tag and data["members"] == mem and data.get("seed") == repeat_seed(seed, sid, r):
                    repeat[(sid, r)] = data
    jobs = [(sid, 0, seed + sid) for sid in range(len(members)) if sid not in real]
    jobs += [(sid, r, repeat_seed(seed, sid, r)) for sid in range(len(members)) for r in range(1, f.repeats)
             if (sid, r) not in repeat]
    pending = {remote.remote(cfg_data, str(run_dir), members[sid], s): (sid, r, s) for sid, r, s in jobs}
    t_real = time.perf_counter()
    total = len(members) * f.repeats
    with tqdm(total=total, initial=total - len(jobs), desc=f"{out_name}: real fine-tuning", unit="run", disable=not progress) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                sid, r, s = pending.pop(ref)
                data = {**ray.get(ref), "tag": tag, "seed": s}
                if r == 0:
                    real[sid] = data
                    write_json(out / "real" / f"subset-{sid:04d}.json", data)
                else:
                    repeat[(sid, r)] = data
                    write_json(out / "real" / f"subset-{sid:04d}-repeat{r}.json", data)
                bar.update(1)
    real_wall = time.perf_counter() - t_real

    rows = []
    for sid in range(len(members)):
        for r in real[sid]["rows"]:
            rows.append({"subset_id": sid, "members": members[sid], **r, "relative_distance": real[sid]["relative_distance"]})
    table = pd.DataFrame(rows)
    by_sigma: dict[str, pd.DataFrame] = {}  # variant → est. accuracy per σ (summary only; not in the table)
    for v in variants:
        e = pd.DataFrame(est[v])
        by_sigma[v] = e[["subset_id", "task", *[f"acc~{sg:g}" for sg in sigmas]]]
        e = e[["subset_id", "task", "est_loss", "est_accuracy"]].rename(
            columns={"est_loss": f"est_loss@{v}", "est_accuracy": f"est_accuracy@{v}"})
        table = table.merge(e, on=["subset_id", "task"])
    table["est_loss"] = table[f"est_loss@{key}"]
    table["est_accuracy"] = table[f"est_accuracy@{key}"]
    write_parquet(out / "results.parquet", __import__("pyarrow").Table.from_pandas(table, preserve_index=False))

    def acc_error(est_acc: pd.Series, true_acc: pd.Series) -> float:
        return float(((est_acc - true_acc).abs() / true_acc.clip(lower=1e-9)).mean())

    def agreement(col: str) -> dict:
        rel = ((table[col] - table["true_loss"]).abs() / table["true_loss"]).mean()
        v = col.split("@", 1)[1]
        acc = acc_error(table[f"est_accuracy@{v}"], table["true_accuracy"])
        soft = table[["subset_id", "task", "true_accuracy"]].merge(by_sigma[v], on=["subset_id", "task"])
        rho = spearmanr(table[col], table["true_loss"]).statistic
        within = [spearmanr(g[col], g["true_loss"]).statistic for _, g in table.groupby("task") if len(g) >= 3 and g["true_loss"].nunique() > 1]
        d_est = table[col] - table["true_loss0"]
        d_true = table["true_loss"] - table["true_loss0"]
        return {
            "relative_error": float(rel),
            "accuracy_relative_error": float(acc),
            "accuracy_relative_error_by_margin_noise": {f"{sg:g}": acc_error(soft[f"acc~{sg:g}"], soft["true_accuracy"])
                                                        for sg in sigmas},
            "spearman": float(rho),
            "spearman_within_task": float(np.nanmean(within)) if within else None,
            "spearman_of_changes": float(spearmanr(d_est, d_true).statistic),
        }

    per_l2 = {v: agreement(f"est_loss@{v}") for v in variants if variants[v][0] == "fixed"}
    per_c = {v: agreement(f"est_loss@{v}") for v in variants if variants[v][0] == "auto"}
    best_l2 = min(per_l2, key=lambda k: per_l2[k]["relative_error"])
    best_c = min(per_c, key=lambda k: per_c[k]["relative_error"])
    acc_rel = acc_error(table["est_accuracy"], table["true_accuracy"])
    k_full = subset_plan(cfg, n)[0]
    acc0 = {m: float((np.asarray(feats[m][3]) > 0).mean()) for m in names}
    true_acc0 = table["task"].map(acc0)
    train_flops = sum(r["train_flops"] for r in real.values())
    train_s = sum(r["train_seconds"] for r in real.values())
    feat_flops = float(feat["flops"])
    feat_s = float(feat["seconds"])
    summary = {
        "subsets": len(members),
        "subset_size": size,
        "tasks": n,
        "dim": feat["dim"],
        "estimate_l2": cfg.estimate.l2,
        "headline": key,
        "calibration_constant": {"value": constant, "source": constant_source},
        "fine_tuning": {"epochs": f.epochs, "lr": f.lr, "batch_size": f.batch_size,
                        "mean_relative_distance": float(np.mean([r["relative_distance"] for r in real.values()]))},
        "first_order": {
            "rss_relative": float(table["rss_h"].sum() / table["ss_h"].sum()),
            "unexplained_change": float(table["rss_h"].sum() / max(table["ss_change"].sum(), 1e-30)),
        },
        "loss": {**per_l2, **per_c}[key],
        "accuracy_relative_error": acc_rel,
        "margin_noise": {"value": sigma, "source": sigma_source},
        "accuracy_relative_error_hard": {**per_l2, **per_c}[key]["accuracy_relative_error_by_margin_noise"]["0"],
        "no_change_baseline_accuracy_relative_error": float(((true_acc0 - table["true_accuracy"]).abs()
                                                              / table["true_accuracy"].clip(lower=1e-9)).mean()),
        # Context for the relative error: predicting "no change" (the loss at θ*) scores this.
        "no_change_baseline_relative_error": float(((table["true_loss0"] - table["true_loss"]).abs() / table["true_loss"]).mean()),
        "noise_ceiling": noise_ceiling(table, repeat, table["est_accuracy"]),
        "by_l2": per_l2,
        "best_l2_by_relative_error": float(best_l2),
        "by_calibration_constant": per_c,
        "best_calibration_constant": float(best_c.split("=", 1)[1]),
        "cost": {
            "featurize_flops": feat_flops,
            "regression_flops": solver_flops,
            "finetune_flops": train_flops,
            "flops_ratio_same_subsets": train_flops / (feat_flops + solver_flops),
            "featurize_seconds": feat_s,
            "regression_seconds": est_solve_s,
            "finetune_seconds": train_s,
            "finetune_wall_seconds": real_wall,
            "seconds_ratio_same_subsets": train_s / (feat_s + est_solve_s),
            "extrapolated_to_subsets": k_full,
            "flops_ratio_extrapolated": (train_flops / len(members) * k_full) / (feat_flops + solver_flops / len(members) * k_full),
            "seconds_ratio_extrapolated": (train_s / len(members) * k_full) / (feat_s + est_solve_s / len(members) * k_full),
            "note": "fine-tuning cost of k subsets extrapolated linearly from the subsets measured here",
        },
    }
    write_json(out / "summary.json", summary)
    write_text(out / "summary.md", render_summary(summary))
    plot_fidelity(table, run_dir / "plots" / f"{out_name}.png", summary)
    log.info(
        "fidelity: loss relative error %.1f%%, Spearman %.2f (within task %s), first-order RSS %.2e; "
        "fine-tuning these %d subsets cost %.0fx the FLOPs of featurize + regressions",
        100 * summary["loss"]["relative_error"], summary["loss"]["spearman"], summary["loss"]["spearman_within_task"],
        summary["first_order"]["rss_relative"], len(members), summary["cost"]["flops_ratio_same_subsets"],
    )
    return summary
