"""Where a new task goes in an existing grouping: the nearest group, or a group of its own.

The groups were made by maximising the affinity inside groups (``cluster``); the number of groups
was chosen so that groups are blocks: their tasks' affinity to each other (the within level, W_g)
stands above their affinity to the other groups' tasks (the between level, B_g). A new task t is
placed by the same block picture, one task at a time:

1. its affinity to each group is the mean of the symmetrised affinity between t and the group's
   tasks, a_g = mean_{j in g} S_tj; the nearest group is g* = argmax_g a_g;
2. t joins g* when a_g* is nearer the group's within level than its between level,
   a_g* ≥ (W_g* + B_g*) / 2 — its affinity looks like a member's, not an outsider's;
3. otherwise t starts a group of its own (it is no closer to g* than g*'s outsiders are).

W_g is the mean off-diagonal affinity inside g (a group of one has none: the mean W of the groups
that have one, else the largest affinity t has); B_g is the mean affinity between g's tasks and
every task outside g (0, "no transfer", when there is one group). With ``fixed_m`` (the config fixes
``cluster.num_groups``) rule 3 is off: the user chose m, so t always joins g*.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..cluster.objective import symmetrize


@dataclass
class Placement:
    task: str
    group: int
    """Index into the groups after placing (== the old number of groups when it started its own)."""
    new_group: bool
    affinity_to_groups: list[float]
    within: float
    between: float
    threshold: float
    rule: str

    def to_dict(self) -> dict:
        return asdict(self)


def group_levels(S: np.ndarray, groups: list[list[int]]) -> tuple[list[float], list[float]]:
    """(W_g, B_g) per group of task indices, on symmetrised S (see the module text)."""
    n = S.shape[0]
    within, between = [], []
    for g in groups:
        inside = np.asarray(g)
        outside = np.setdiff1d(np.arange(n), inside)
        block = S[np.ix_(inside, inside)]
        k = len(inside)
        within.append(float((block.sum() - np.trace(block)) / (k * (k - 1))) if k > 1 else float("nan"))
        between.append(float(S[np.ix_(inside, outside)].mean()) if len(outside) else 0.0)
    known = [w for w in within if np.isfinite(w)]
    fill = float(np.mean(known)) if known else float("nan")
    return [w if np.isfinite(w) else fill for w in within], between


def place_task(S: np.ndarray, names: list[str], groups: list[list[str]], task: str, fixed_m: bool = False) -> Placement:
    """Place ``task`` (a row/column of S, not yet in ``groups``) by the rule of the module text.

    ``S``: the affinity over ``names`` (every grouped task and ``task``), larger = better transfer."""
    S = symmetrize(np.asarray(S, dtype=np.float64))
    idx = {n: i for i, n in enumerate(names)}
    if task not in idx:
        raise ValueError(f"task {task!r} is not in the affinity matrix")
    members = [[idx[n] for n in g] for g in groups if g]
    if not members:
        return Placement(task, 0, True, [], float("nan"), 0.0, float("nan"), "first group")
    t = idx[task]
    grouped = sorted(i for g in members for i in g)
    # levels among the grouped tasks only (the new task is not part of any block yet)
    sub = S[np.ix_(grouped, grouped)]
    pos = {i: p for p, i in enumerate(grouped)}
    within, between = group_levels(sub, [[pos[i] for i in g] for g in members])
    a = [float(S[t, g].mean()) for g in members]
    best = int(np.argmax(a))
    w = within[best] if np.isfinite(within[best]) else max(a)
    threshold = (w + between[best]) / 2.0
    if fixed_m:
        return Placement(task, best, False, a, w, between[best], threshold, "nearest group (cluster.num_groups is fixed)")
    joins = a[best] >= threshold
    rule = (f"affinity {a[best]:.4g} to the nearest group ≥ midpoint {threshold:.4g} of its within {w:.4g} and "
            f"between {between[best]:.4g} levels" if joins else
            f"affinity {a[best]:.4g} to the nearest group < midpoint {threshold:.4g} of its within {w:.4g} and "
            f"between {between[best]:.4g} levels: a group of its own")
    return Placement(task, best if joins else len(members), not joins, a, w, between[best], threshold, rule)


def place_tasks(S: np.ndarray, names: list[str], groups: list[list[str]], new: list[str],
                fixed_m: bool = False) -> tuple[list[list[str]], list[Placement]]:
    """Place each task of ``new`` in turn (a task that started a group can be joined by the next one).
    Returns the groups after placing (old groups keep their order and index) and each placement."""
    out = [list(g) for g in groups if g]
    placements = []
    for task in new:
        known = [n for n in names if n == task or any(n in g for g in out)]
        sub = np.asarray(S)[np.ix_([names.index(n) for n in known], [names.index(n) for n in known])]
        p = place_task(sub, known, out, task, fixed_m=fixed_m)
        if p.new_group:
            out.append([task])
        else:
            out[p.group].append(task)
        placements.append(p)
    return out, placements
