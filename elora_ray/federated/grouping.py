"""The federated ensemble's client grouping: features of every client's windows, the client
affinity of ``estimate.affinity`` (:mod:`.affinity`) and the groups, scored against the clients'
origins when they are known. Functions of a running :class:`~.stage.FederatedRun` (its pool, config and folder).
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..cluster.kernel import scaling_for
from ..cluster.select import cluster_tasks
from ..estimate.subsets import sample_subsets
from ..io import write_json, write_parquet
from ..raysession import cluster_cpus
from .affinity import client_halves, federated_l2, first_order, from_gains, paper

log = logging.getLogger(__name__)


def _chunks(xs: list, n: int) -> list[list]:
    return [xs[i : i + n] for i in range(0, len(xs), n)]


def client_features(run) -> tuple[dict[str, dict], float, int]:
    """Per client: the projected gradients of its featurisation (train) windows, and under
    ``"validation"`` those of its validation windows (held out)."""
    path = run.fed / "features.parquet"
    if path.is_file() and not run.force:
        df = pq.read_table(path).to_pandas()
    else:
        items = [(k, (chunk,)) for k, chunk in enumerate(_chunks(run.clients, 10))]
        res = run.pool.map("featurize", items, desc="featurize clients")
        if res.failed:
            raise RuntimeError(f"featurisation failed for client chunks {sorted(res.failed)}")
        rows: dict[str, list] = {"client": [], "split": [], "sample_id": [], "h0": [], "g": []}
        for k in sorted(res.results):
            for c, v in res.results[k]["features"].items():
                for split, part in (("train", v), ("validation", v.get("validation"))):
                    if part is None:
                        continue
                    rows["client"] += [c] * len(part["sample_id"])
                    rows["split"] += [split] * len(part["sample_id"])
                    rows["sample_id"] += part["sample_id"]
                    rows["h0"] += part["h0"].tolist()
                    rows["g"] += list(part["g"])
        table = pa.table({"client": rows["client"], "split": rows["split"], "sample_id": rows["sample_id"],
                          "h0": pa.array(rows["h0"], pa.float32()),
                          "g": pa.array([np.asarray(x, np.float32) for x in rows["g"]], pa.list_(pa.float32()))})
        write_parquet(path, table)
        df = table.to_pandas()

    def part(d: pd.DataFrame) -> dict:
        return {"sample_id": d["sample_id"].tolist(), "g": np.stack(d["g"].to_numpy()).astype(np.float32),
                "h0": d["h0"].to_numpy(np.float32)}

    feats = {}
    for c, d in df.groupby("client", sort=False):
        feats[c] = part(d[d["split"] == "train"])
        val = d[d["split"] == "validation"]
        if len(val):
            feats[c]["validation"] = part(val)
    n = len(df)
    return feats, n * run.units["featurize"], n

def client_affinity(run, feats: dict[str, dict]) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None, dict]:
    """The client affinity of ``estimate.affinity`` (see :mod:`.affinity`), its two half estimates
    when the kind has them, and what to report about the estimate."""
    import ray

    f, kind, names = run.fcfg, run.cfg.estimate.affinity, run.clients
    if kind == "first_order":
        full, a, b = first_order(feats, names, run.cfg.seed)
        return full, (a, b), {"affinity": kind}
    size = min(f.subset_size, len(names))
    subsets = sample_subsets(len(names), f.num_subsets, size, run.cfg.seed)
    if kind == "paper":  # f_i(S) on held-out windows: clients without validation windows are scored on train
        data = {c: (feats[c]["g"], feats[c]["h0"], feats[c].get("validation", feats[c])["g"],
                    feats[c].get("validation", feats[c])["h0"]) for c in names}
        halves = None
    else:
        data = {c: (feats[c]["g"], feats[c]["h0"], feats[c]["g"], feats[c]["h0"]) for c in names}
        halves = client_halves(feats, names, run.cfg.seed)
    ref = ray.put(data)
    chunks = _chunks(list(enumerate(subsets)), max(1, len(subsets) // (4 * cluster_cpus())))
    # on the pool's actors: they hold the CPUs, so separate Ray tasks would wait for them forever
    res = run.pool.map("fit_subsets", [(k, (ch, ref, names, federated_l2(run.cfg), run.cfg.estimate.max_iter, halves))
                                         for k, ch in enumerate(chunks)], desc="subset regressions")
    if res.failed:
        raise RuntimeError(f"subset regressions failed: {next(iter(res.failed.values()))}")
    rows = [r for k in sorted(res.results) for r in res.results[k]["rows"]]
    counts = np.zeros((len(names), len(names)))
    for s in subsets:
        counts[np.ix_(s, s)] += 1
    info = {"affinity": kind, "subsets": len(subsets), "subset_size": size,
            "pair_coverage": float((counts[~np.eye(len(names), dtype=bool)] > 0).mean())}
    if kind == "paper":
        return paper(rows, names), None, info
    gains = [e for k in sorted(res.results) for e in res.results[k]["gains"]]
    full, a, b = from_gains(subsets, gains, len(names))
    return full, (a, b), info

def client_groups(run, feats: dict[str, dict]) -> list[list[str]]:
    path = run.fed / "groups.json"
    if path.is_file() and not run.force:
        return json.loads(path.read_text())["groups"]
    f, names = run.fcfg, run.clients
    t0 = time.perf_counter()
    A, halves, info = client_affinity(run, feats)
    pd.DataFrame(A, index=names, columns=names).to_csv(run.fed / "affinity.csv")
    m = f.num_groups if f.num_groups == "auto" else min(f.num_groups, len(names))
    c = run.cfg.cluster
    res = cluster_tasks(A, names, num_groups=m, max_groups=c.max_groups, seed=run.cfg.seed, solver=c.solver,
                        halves=halves, select_m=c.select_m,
                        local_scaling=scaling_for(run.cfg.estimate.affinity, c.local_scaling))
    record = {"groups": res.groups, "m": res.m, "method": res.method, "reason": res.reason,
              "local_scaling": res.local_scaling,
              "average_density": res.score, **info, "estimate_s": time.perf_counter() - t0,
              "candidates": res.candidates}
    truth = run.meta.get("source_of")
    if truth and len(set(truth.values())) > 1:  # clients of known origin: how well the groups recover it
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

        label = {c: g for g, members in enumerate(res.groups) for c in members}
        y_true, y_pred = [truth[c] for c in names], [label[c] for c in names]
        record["agreement_with_sources"] = {"ari": float(adjusted_rand_score(y_true, y_pred)),
                                            "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
                                            "sources": len(set(y_true))}
    write_json(path, record)
    log.info("federated: %s affinity in %.1f s; %d groups (%s), sizes %s%s", info["affinity"],
             time.perf_counter() - t0, res.m, res.method, sorted((len(g) for g in res.groups), reverse=True),
             "; ARI %.2f / NMI %.2f against the clients' sources" % (record["agreement_with_sources"]["ari"],
             record["agreement_with_sources"]["nmi"]) if "agreement_with_sources" in record else "")
    return res.groups
