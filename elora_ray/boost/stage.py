"""``elora boost``: b gradient-boosting steps (Algorithm 2, lines 3–8).

Each step:

1. computes every group ensemble's training log loss on its own tasks (from the saved
   logits, aligned by sample id) and picks the group with the highest;
2. takes that group's residuals r_s = 1 − p_s (p_s: the group ensemble's probability of the
   gold label) on its training and validation samples;
3. fits a new adapter to them — ``linearized``: ridge regression on the projected gradients,
   no training (:mod:`.linearized`); ``trained``: fine-tunes an adapter from θ* on the squared
   loss (h_X(s) − (h_θ*(s) + r_s))², heads frozen, early-stopped on the validation residuals;
4. adds the learner's output change z_X − z_θ* to the group with coefficient η (times the
   line-search multiplier ρ that minimises the group's training loss, when enabled) — the rule
   of :mod:`.rule`, which the federated ensemble follows too.

Steps are appended to ``ensemble/members.json`` one at a time, so a killed run resumes at
the next step; ``boost/steps.json`` records each step's losses and fit diagnostics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..artifacts import read_prepared
from ..config import RunConfig
from ..ensemble.members import EnsembleMembers, Learner, group_outputs, load_members, save_members
from ..ensemble.outputs import TaskOutputs, gold_prob, log_loss, log_softmax, read_outputs
from ..io import write_json, write_parquet
from ..layout import BOOST_DIR
from ..train.jobs import AdapterJob
from ..train.runner import run_jobs
from ..train.stage import output_splits, train_seed
from .rule import step_coefficient, worst_group

log = logging.getLogger(__name__)


def residual_table(outs: dict[str, TaskOutputs], reference: dict[str, TaskOutputs]) -> pd.DataFrame:
    """sample_id, residual 1 − p_s, h0 (gold log-odds at θ*), target h0 + residual."""
    frames = []
    for name, o in outs.items():
        p = gold_prob(o)
        ref = reference[name].align_to(o.sample_ids, f"θ* outputs ({name})")
        h0 = _gold_log_odds(ref.logits, ref.labels, np.arange(len(ref)))
        frames.append(pd.DataFrame({"task": name, "sample_id": o.sample_ids, "residual": 1.0 - p, "h0": h0, "target": h0 + 1.0 - p}))
    return pd.concat(frames, ignore_index=True)


def loss_along(base: dict[str, TaskOutputs], change: dict[str, np.ndarray]):
    """ρ ↦ the log loss of base + ρ·change (what the line search minimises)."""

    def loss(rho: float) -> float:
        return log_loss({k: TaskOutputs(o.sample_ids, o.labels, o.logits + rho * change[k]) for k, o in base.items()})

    return loss


def group_losses(run: Path, members: EnsembleMembers, num_labels: dict[str, int]) -> list[float]:
    return [log_loss(group_outputs(run, members, j, "train", num_labels=num_labels)) for j in range(len(members.groups))]


def boost_stage(cfg: RunConfig, run_dir: Path, force: bool = False, progress: bool = True) -> dict:
    run = Path(run_dir)
    members = load_members(run)
    if force and members.boosting_steps:
        for g in members.groups:
            g.learners.clear()
        save_members(run, members)
    tasks = read_prepared(run)
    names = [t.name for t in tasks]
    num_labels = {t.name: len(t.labels) for t in tasks}
    b = cfg.boost
    steps_path = run / BOOST_DIR / "steps.json"
    history = json.loads(steps_path.read_text())["steps"] if steps_path.is_file() and not force else []
    history = history[: members.boosting_steps]
    done = members.boosting_steps
    if done > b.steps:
        log.info("boost: %d steps already in the ensemble, more than boost.steps=%d; keeping the first %d", done, b.steps, b.steps)
        for g in members.groups:
            g.learners = [lr for lr in g.learners if lr.step < b.steps]
        save_members(run, members)
        history = history[: b.steps]
        done = b.steps
    bar = tqdm(total=b.steps, initial=done, desc="boost", unit="step", disable=not progress or b.steps == 0)
    try:
        for step in range(done, b.steps):
            losses = group_losses(run, members, num_labels)
            rejected = {h["group"] for h in history if h.get("rejected")}
            if len(rejected) == len(members.groups):
                log.info("boost: every group's last step raised its validation loss (boost.keep=%s); stopping after %d of %d steps",
                         b.keep, step, b.steps)
                break
            j = worst_group([-np.inf if k in rejected else v for k, v in enumerate(losses)])
            entry = boost_group(cfg, run, members, j, step, f"boost-{step}", names, num_labels, losses)
            history.append(entry)
            save_members(run, members)
            write_json(steps_path, {"steps": history})
            bar.update(1)
    finally:
        bar.close()
    write_json(steps_path, {"steps": history})
    return {
        "steps": history,
        "train_flops": sum(h["train_flops"] for h in history),
        "seconds": sum(h["job_seconds"] for h in history),
    }


def boost_group(cfg: RunConfig, run: Path, members: EnsembleMembers, j: int, step: int, job_id: str, names: list[str],
                num_labels: dict[str, int], losses: list[float] | None = None) -> dict:
    """One boosting step on group ``j``: fit a learner (job ``job_id``) to the group ensemble's residuals,
    append it to the group in ``members`` (not saved here) and return the step's record."""
    b = cfg.boost
    t0 = time.perf_counter()
    losses = group_losses(run, members, num_labels) if losses is None else losses
    g = members.groups[j]
    train = group_outputs(run, members, j, "train", num_labels=num_labels)
    val = group_outputs(run, members, j, "validation", num_labels=num_labels)
    ref_train = read_outputs(run, members.reference, "train", g.tasks, num_labels)
    ref_val = read_outputs(run, members.reference, "validation", g.tasks, num_labels)
    table = pd.concat([residual_table(train, ref_train).assign(split="train"), residual_table(val, ref_val).assign(split="validation")])
    state = hashlib.sha256(
        json.dumps([members.fingerprint, j, [(lr.job_id, lr.coef) for lr in g.learners]]).encode()
        + pd.util.hash_pandas_object(table[["sample_id", "residual"]], index=False).values.tobytes()
    ).hexdigest()[:16]
    targets = BOOST_DIR / "targets" / f"{job_id}.parquet"
    write_parquet(run / targets, _to_arrow(table))
    job = AdapterJob(
        id=job_id, method="boost", tasks=list(g.tasks), output_tasks=output_splits(names, g.tasks),
        loss="log_odds_mse", targets=str(targets), epochs=b.epochs, lr=b.lr, train_heads=False,
        seed=train_seed(cfg) + 1000 + step, kind="linearized" if b.method == "linearized" else "trained", inputs=state,
    )
    rec = run_jobs(cfg, run, [job], desc=f"boost step {step + 1}", progress=False)[job_id]
    learner_train = read_outputs(run, job_id, "train", g.tasks, num_labels)
    change = {k: learner_train[k].align_to(o.sample_ids).logits - ref_train[k].align_to(o.sample_ids).logits for k, o in train.items()}
    rho, coef = step_coefficient(b, loss_along(train, change))
    g.learners.append(Learner(job_id=job_id, coef=coef, step=step))
    after = log_loss(group_outputs(run, members, j, "train", num_labels=num_labels))
    val_after = log_loss(group_outputs(run, members, j, "validation", num_labels=num_labels))
    val_before = log_loss(val)
    val_with_learner = val_after
    rejected = b.keep == "if_validation_improves" and val_after > val_before
    if rejected:  # kept as a member with coefficient 0: the step counts (a resumed run goes on after it)
        g.learners[-1].coef = 0.0
        after, val_after = losses[j], val_before
    # How well the learner's actual gold log-odds change tracks the residual it was fit to.
    h_change = _gold_change(learner_train, ref_train, train)
    resid = table[table["split"] == "train"].set_index("sample_id")["residual"]
    r = resid.reindex(h_change.index).to_numpy()
    entry = {
        "step": step, "group": j, "tasks": g.tasks, "job": job_id, "method": b.method,
        "group_train_losses_before": losses, "train_loss_before": losses[j], "train_loss_after": after,
        "validation_loss_before": val_before, "validation_loss_after": val_after,
        "rho": rho, "coef": 0.0 if rejected else coef, "rejected": rejected,
        "validation_loss_with_learner": val_with_learner, "residual_mean": float(r.mean()),
        "actual_change_vs_residual_corr": float(np.corrcoef(h_change.to_numpy(), r)[0, 1]) if len(r) > 2 else float("nan"),
        "train_flops": float(rec["metrics"].get("train_flops", 0.0)), "job_seconds": float(rec["wall_s"]),
        "seconds": round(time.perf_counter() - t0, 3),
        **{k: rec["metrics"][k] for k in ("fit_r2_uncentered", "step_norm") if k in rec["metrics"]},
    }
    log.info(
        "boost step %d: group %d (%s) train loss %.4f → %.4f, validation %.4f → %.4f (ρ=%.3g, coef %.3g)%s",
        step + 1, j, ", ".join(g.tasks), losses[j], after, entry["validation_loss_before"], val_after, rho, entry["coef"],
        "; rejected: it raised the validation loss (boost.keep)" if rejected else "",
    )
    return entry


def _gold_change(learner: dict[str, TaskOutputs], ref: dict[str, TaskOutputs], like: dict[str, TaskOutputs]) -> pd.Series:
    out = []
    for k, o in like.items():
        a = learner[k].align_to(o.sample_ids).logits
        b = ref[k].align_to(o.sample_ids).logits
        idx = np.arange(len(o))
        out.append(pd.Series(_gold_log_odds(a, o.labels, idx) - _gold_log_odds(b, o.labels, idx), index=o.sample_ids))
    return pd.concat(out)


def _gold_log_odds(z: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    lp = log_softmax(z)
    gold = lp[idx, labels]
    others = lp.copy()
    others[idx, labels] = -np.inf
    m = others.max(1, keepdims=True)
    return gold - (m[:, 0] + np.log(np.exp(others - m).sum(1)))


def _to_arrow(df: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
