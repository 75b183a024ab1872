"""Seeded sampling of k fixed-size task subsets, balanced so every task appears about equally."""

from __future__ import annotations

import math

import numpy as np

#: Tasks per subset at most (the paper used subsets of 10 for 500 tasks).
MAX_AUTO_SUBSET_SIZE = 10
#: ``estimate.num_subsets: auto`` samples enough subsets for each task to appear this often.
DEFAULT_APPEARANCES = 40
#: ... and never fewer subsets than this.
MIN_AUTO_SUBSETS = 100


def default_subset_size(n: int) -> int:
    """About a third of the tasks, between 2 and 10, and below n so some subsets leave each task out."""
    if n <= 2:
        return 1
    return max(2, min(n - 1, MAX_AUTO_SUBSET_SIZE, round(n / 3)))


def default_num_subsets(n: int, size: int, appearances: int = DEFAULT_APPEARANCES) -> int:
    """k such that every task appears about ``appearances`` times (k·size/n), at least 100.

    k grows linearly with n at a fixed subset size, so the cost of the estimate stage is linear
    in n; k ≥ 4n keeps the pairwise transfer model (n unknowns per task) well determined.
    """
    return max(MIN_AUTO_SUBSETS, math.ceil(appearances * n / max(size, 1)))


def design_stats(n: int, subsets: list[tuple[int, ...]]) -> dict:
    """How often each task appears and each pair co-occurs in ``subsets`` (reported by estimate)."""
    X = np.zeros((len(subsets), n))
    for r, s in enumerate(subsets):
        X[r, list(s)] = 1.0
    app = X.sum(0)
    co = X.T @ X
    off = ~np.eye(n, dtype=bool)
    return {
        "appearances_per_task": {"mean": float(app.mean()), "min": int(app.min()), "max": int(app.max())},
        "cooccurrences_per_pair": {"mean": float(co[off].mean()) if n > 1 else 0.0,
                                   "pairs_never_together": float((co[off] == 0).mean()) if n > 1 else 0.0},
        "absences_per_task": {"mean": float(len(subsets) - app.mean()), "min": int(len(subsets) - app.max())},
    }


def sample_subsets(n: int, k: int, size: int, seed: int) -> list[tuple[int, ...]]:
    """k subsets of ``size`` distinct task indices (sorted tuples).

    Tasks are drawn with priority to the least used so far (random tie-breaking), which keeps
    per-task counts within one of each other; duplicates are re-drawn while unused subsets
    remain. The same (n, k, size, seed) always gives the same list.
    """
    if not 1 <= size <= n:
        raise ValueError(f"subset size must be between 1 and the number of tasks ({n}); got {size}")
    if k < 1:
        raise ValueError("need at least one subset")
    rng = np.random.default_rng(seed)
    counts = np.zeros(n)
    seen: set[tuple[int, ...]] = set()
    total = math.comb(n, size)
    out: list[tuple[int, ...]] = []
    for _ in range(k):
        for _attempt in range(50):
            noise = rng.random(n)
            order = np.lexsort((noise, counts))  # least used first, random among ties
            pool = order[: min(n, size + max(1, size // 2))]  # a little slack so subsets vary
            pick = tuple(sorted(int(x) for x in rng.choice(pool, size, replace=False)))
            if pick not in seen or len(seen) >= total:
                break
        seen.add(pick)
        counts[list(pick)] += 1
        out.append(pick)
    return out
