"""Stage 3 — cluster: partition the tasks by the affinity matrix; ``groups.json`` + heatmap.

Reads ``affinity.csv`` (and the half-sample estimates next to it, which choose m; written by
``estimate``), writes ``groups.json`` (groups, m, score, method, candidates with each m's
criterion values, and — on the embedded suite — the adjusted Rand index against the
planted groups) and ``plots/affinity.png`` ordered by cluster.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..config import RunConfig
from ..errors import ConfigError
from ..io import fingerprint, write_json
from .kernel import scaling_for
from .plot import plot_affinity
from .select import cluster_tasks, resolve_select_m

log = logging.getLogger(__name__)


def cluster_stage(cfg: RunConfig, run_dir: Path, force: bool = False, progress: bool = True) -> dict:
    from ..artifacts import read_affinity, read_affinity_halves
    from ..layout import HALF_FILES, RunLayout

    names, A = read_affinity(run_dir)
    halves = read_affinity_halves(run_dir)
    c = cfg.cluster
    digest = hashlib.sha256(RunLayout(run_dir).affinity.read_bytes())
    if halves is not None:
        for f in HALF_FILES:
            digest.update((run_dir / f).read_bytes())
    # Probed encoder heads are fit on every training sample, which couples the two halves (see resolve_select_m).
    independent = not RunLayout(run_dir).heads.is_file()
    fp_src = {"affinity": digest.hexdigest()[:16], "cluster": c.model_dump(mode="json"), "seed": cfg.seed,
              "halves_independent": independent, "affinity_kind": cfg.estimate.affinity}
    fp = fingerprint(fp_src)
    out = RunLayout(run_dir).groups
    if out.is_file() and not force:
        prev = json.loads(out.read_text())
        if prev.get("fingerprint") == fp:
            log.info("cluster: groups.json is up to date (fingerprint %s), skipping", fp)
            return prev
    kwargs = {}
    if c.max_sdp_tasks is not None:
        kwargs["max_sdp_tasks"] = c.max_sdp_tasks
    try:
        result = cluster_tasks(
            A, names, num_groups=c.num_groups, max_groups=min(c.max_groups, len(names)), trace_weight=c.trace_weight,
            solver=c.solver, seed=cfg.seed, progress=progress, halves=halves, select_m=c.select_m,
            halves_independent=independent, local_scaling=scaling_for(cfg.estimate.affinity, c.local_scaling), **kwargs,
        )
    except ValueError as exc:  # bad cluster settings for these tasks (e.g. num_groups > n) or a bad matrix
        raise ConfigError(f"cluster: {exc} (affinity from {RunLayout(run_dir).affinity})") from None
    if c.num_groups == "auto" and c.trace_weight is None and c.select_m == "heldout" and halves is None:
        log.warning("cluster: select_m=heldout needs the affinity halves (estimate.affinity transfer or first_order); "
                    "chose m by the eigengap instead")
    if result.reason:
        log.warning("cluster: %s used: %s", result.method, result.reason)
    data = {"fingerprint": fp, **result.to_dict(),
            "select_m": resolve_select_m(c.select_m, independent and halves is not None) if c.num_groups == "auto" else None}
    if not cfg.tasks:  # the embedded suite knows its answer
        from sklearn.metrics import adjusted_rand_score

        from ..tasks.suite import planted_groups

        planted = planted_groups(cfg.suite)
        truth = {t: g for g, grp in enumerate(planted) for t in grp}
        if set(truth) == set(names):
            data["planted_groups"] = planted
            data["planted_ari"] = float(adjusted_rand_score([truth[n] for n in names], result.labels))
            log.info("cluster: adjusted Rand index against the planted groups: %.3f", data["planted_ari"])
    plot_affinity(A, names, result.groups, run_dir / "plots" / "affinity.png",
                  title=f"task affinity (m={result.m}, {result.method})")
    write_json(out, data)
    log.info("cluster: m=%d groups (%s, average density %.4g): %s", result.m, result.method, result.score, result.groups)
    return data
