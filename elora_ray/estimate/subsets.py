"""Seeded sampling of k fixed-size task subsets, balanced so every task appears about equally."""

from __future__ import annotations

import math

import numpy as np


def default_subset_size(n: int) -> int:
    """About a third of the tasks, between 2 and 8 (and never more than n)."""
    return max(1, min(n, max(2, min(8, round(n / 3)))))


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
