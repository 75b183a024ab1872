"""Seeded Johnson–Lindenstrauss projection generated block by block (TRAK-style).

``P`` is a p × d random matrix with i.i.d. N(0, 1/d) (or ±1/√d Rademacher) entries, so
E[‖Pᵀg‖²] = ‖g‖² and inner products are preserved in expectation.
Row block ``k`` (gradient coordinates ``k·block_rows … (k+1)·block_rows − 1``) is drawn from
its own CPU generator seeded by ``(seed, k)``, so

- any worker, on any device, with the same ``seed`` and ``p`` gets the same P;
- projecting never needs more than ``block_rows × d`` numbers at once (unless the whole P
  fits ``cache_limit_mb``, in which case the blocks are kept to avoid regenerating them).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

Kind = Literal["gaussian", "rademacher"]


def block_seed(seed: int, block: int) -> int:
    """A 63-bit seed for row block ``block`` derived from ``seed`` (stable across runs)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, block]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


class JLProjector:
    """Projects [batch, p] gradients to [batch, d] with a seeded, block-generated P."""

    def __init__(
        self,
        p: int,
        d: int,
        seed: int,
        kind: Kind = "gaussian",
        block_rows: int = 4096,
        cache_limit_mb: float = 256.0,
        device: torch.device | str = "cpu",
    ) -> None:
        if p < 1 or d < 1:
            raise ValueError(f"projection needs p ≥ 1 and d ≥ 1 (got p={p}, d={d})")
        if kind not in ("gaussian", "rademacher"):
            raise ValueError(f"unknown projection kind {kind!r}")
        self.p, self.d, self.seed, self.kind = int(p), int(d), int(seed), kind
        self.block_rows = max(1, int(block_rows))
        self.device = torch.device(device)
        self.num_blocks = math.ceil(self.p / self.block_rows)
        self._cache: list[torch.Tensor] | None = [] if p * d * 4 <= cache_limit_mb * 2**20 else None

    def block(self, k: int) -> torch.Tensor:
        """Rows ``k·block_rows …`` of P as a float32 tensor on ``self.device``."""
        if self._cache is not None and k < len(self._cache):
            return self._cache[k]
        start = k * self.block_rows
        rows = min(self.block_rows, self.p - start)
        gen = torch.Generator(device="cpu").manual_seed(block_seed(self.seed, k))
        if self.kind == "gaussian":
            blk = torch.randn(rows, self.d, generator=gen, dtype=torch.float32)
        else:
            blk = torch.randint(0, 2, (rows, self.d), generator=gen, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)
        blk = blk.div_(math.sqrt(self.d)).to(self.device)
        if self._cache is not None and k == len(self._cache):
            self._cache.append(blk)
        return blk

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """``grads @ P`` for grads of shape [batch, p] (float32 accumulation)."""
        if grads.ndim != 2 or grads.shape[1] != self.p:
            raise ValueError(f"expected gradients of shape [batch, {self.p}], got {tuple(grads.shape)}")
        g = grads.to(self.device, torch.float32)
        out = torch.zeros(g.shape[0], self.d, dtype=torch.float32, device=self.device)
        for k in range(self.num_blocks):
            start = k * self.block_rows
            out.addmm_(g[:, start : start + self.block_rows], self.block(k))
        return out

    def back_project(self, w: torch.Tensor) -> torch.Tensor:
        """``P @ w`` for w of shape [d] (maps a solution in the projected space back to p dims)."""
        w = w.to(self.device, torch.float32).reshape(self.d)
        return torch.cat([self.block(k) @ w for k in range(self.num_blocks)])

    def dense(self) -> torch.Tensor:
        """The whole P (for tests and small p only)."""
        return torch.cat([self.block(k) for k in range(self.num_blocks)])

    def describe(self) -> dict:
        return {"p": self.p, "d": self.d, "seed": self.seed, "kind": self.kind, "block_rows": self.block_rows}
