"""Per-sample gradients w.r.t. LoRA's *update matrix*, sketched to d dimensions as they are formed.

``featurize.gradient: full_rank``. At θ* LoRA's output at a site is ``W x + s·B A x`` with
``B = 0``, so the gradient w.r.t. ``B`` is ``∂h/∂y ⊗ (A x)``: it sees the input only through
the r random rows of ``A``. Real fine-tuning moves ``A`` too. The gradient w.r.t. the update
``M = B A`` itself (any rank) is

    ∂h/∂M = Σ_t (s·∂h/∂y_t) ⊗ x_t = Σ_t gB_t ⊗ x_t          (o × i per site)

where ``gB_t`` is the gradient at lora_B's output and ``x_t`` the input of lora_A — both
captured by hooks in the same single forward + backward as the adapter gradients; note
``∂h/∂B = (∂h/∂M) Aᵀ``, so the adapter gradients are this one seen through A.

o × i is too large to materialise per sample (Llama-1B: millions per site), so each site is
sketched in place with two seeded Gaussian matrices R (o × a) and Q (i × b), a·b ≥ d:

    φ(G) = vec(Rᵀ G Q)[:d] / √d,  with Rᵀ G Q = Σ_t (Rᵀ gB_t)(Qᵀ x_t)ᵀ

Every entry of Rᵀ G Q has E[(RᵀGQ)_{ab} (RᵀG'Q)_{ab}] = ⟨G, G'⟩_F, so E[⟨φ(G), φ(G')⟩] =
⟨G, G'⟩ (a Kronecker / tensor JL sketch); the sites' sketches (independent R, Q) are summed, so
the feature inner product estimates Σ_sites ⟨∂h/∂M, ∂h'/∂M⟩ without bias. Cost per token and
site: o·a + i·b + a·b multiply-adds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .hooks import ForwardBackwardHooks
from .projection import block_seed


@dataclass(frozen=True)
class LoraSite:
    """One LoRA site: the input-side module (its input is x) and the output-side one (zero at θ*)."""

    name: str
    """The LoRA layer (the module holding ``base_layer``, ``lora_A`` and ``lora_B``)."""
    input_side: nn.Linear
    output_side: nn.Linear

    @property
    def size(self) -> int:
        """Entries of the update matrix M at this site (o × i)."""
        return self.output_side.out_features * self.input_side.in_features


def lora_sites(model: nn.Module) -> list[LoraSite]:
    """Every ``lora_A.<adapter>`` / ``lora_B.<adapter>`` pair, in module order.

    Raises ``ValueError`` when the model has no LoRA layers (a bottleneck adapter's update is
    not a matrix: ``featurize.gradient: full_rank`` is for the LoRA family only).
    """
    modules = dict(model.named_modules())
    sites: list[LoraSite] = []
    for name, m in modules.items():
        parts = name.split(".")
        if "lora_B" not in parts or not isinstance(m, nn.Linear):
            continue
        a_name = ".".join("lora_A" if p == "lora_B" else p for p in parts)
        a = modules.get(a_name)
        if not isinstance(a, nn.Linear):
            raise ValueError(f"LoRA layer {name} has no matching {a_name}")
        sites.append(LoraSite(".".join(parts[: parts.index("lora_B")]), a, m))
    if not sites:
        raise ValueError("featurize.gradient=full_rank needs a LoRA-family adapter (lora, qlora, mplora); "
                         "this model has no lora_A / lora_B layers — use featurize.gradient=adapter")
    return sites


def sketch_shape(d: int) -> tuple[int, int]:
    """(a, b) with a·b ≥ d and a ≈ b ≈ √d."""
    a = max(1, math.isqrt(d))
    if a * a < d:
        a += 1
    b = -(-d // a)
    return a, b


class PerSampleUpdateSketch(ForwardBackwardHooks):
    """Context manager: hooks every LoRA site and returns the [B, d] sketch after one backward.

    >>> with PerSampleUpdateSketch(sites, d=400, seed=7) as sk:
    ...     h = per_sample_output(batch)        # shape [B]
    ...     phi = sk.backward(h)                # shape [B, 400]
    """

    def __init__(self, sites: list[LoraSite], d: int, seed: int, device: torch.device | str = "cpu") -> None:
        if d < 1:
            raise ValueError(f"sketch dimension must be ≥ 1 (got {d})")
        super().__init__()
        self.sites = sites
        self.d = int(d)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.a, self.b = sketch_shape(self.d)
        self.p = sum(s.size for s in sites)
        self._r: list[torch.Tensor] = []
        self._q: list[torch.Tensor] = []
        for k, s in enumerate(sites):
            gen = torch.Generator(device="cpu").manual_seed(block_seed(self.seed, k))
            self._r.append(torch.randn(s.output_side.out_features, self.a, generator=gen).to(self.device))
            self._q.append(torch.randn(s.input_side.in_features, self.b, generator=gen).to(self.device))

    def sketch_matrices(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, Q) of site ``k`` (for tests)."""
        return self._r[k], self._q[k]

    def _register(self) -> list:
        handles = []
        for k, s in enumerate(self.sites):
            handles.append(s.input_side.register_forward_hook(self._input_hook(k)))
            handles.append(s.output_side.register_forward_hook(self._output_hook(k)))
        return handles

    def _input_hook(self, k: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if torch.is_grad_enabled():
                self._keep_input(k, args[0])

        return hook

    def _output_hook(self, k: int):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if torch.is_grad_enabled() and output.requires_grad:
                self._keep_output_grad(k, output)

        return hook

    def backward(self, per_sample_output: torch.Tensor) -> torch.Tensor:
        """Backpropagate Σ_b h_b and return the [B, d] sketch of each sample's ∂h/∂M."""
        batch = self._backward(per_sample_output)
        out = torch.zeros(batch, self.a * self.b, dtype=torch.float32, device=self.device)
        for k in range(len(self.sites)):
            n_in, n_out = len(self._inputs.get(k, [])), len(self._grads.get(k, {}))
            if n_in != n_out:
                raise RuntimeError(f"LoRA site {self.sites[k].name}: {n_in} inputs but {n_out} outputs were hooked")
            for x, g in self._pairs(k):
                x3 = x.reshape(batch, -1, x.shape[-1]).to(self.device, torch.float32)
                g3 = g.reshape(batch, -1, g.shape[-1]).to(self.device, torch.float32)
                u = g3 @ self._r[k]  # [B, T, a]
                v = x3 @ self._q[k]  # [B, T, b]
                out += torch.einsum("bta,btc->bac", u, v).reshape(batch, -1)
        self._clear()
        return out[:, : self.d] / math.sqrt(self.d)

    def update_matrices(self, w: torch.Tensor) -> list[torch.Tensor]:
        """The adjoint of the sketch: per site ΔM = R W Qᵀ / √d with W = w (zero-padded to a·b) as a × b.

        Exact: ⟨∂h/∂M, ΔM⟩ summed over sites equals ⟨φ, w⟩, so moving every site's update matrix by
        ΔM changes h to first order by exactly what the linearised model in sketch space predicts."""
        w = torch.as_tensor(w, dtype=torch.float32, device=self.device).reshape(-1)
        if w.numel() != self.d:
            raise ValueError(f"expected a vector of {self.d} sketch coordinates, got {w.numel()}")
        full = torch.zeros(self.a * self.b, dtype=torch.float32, device=self.device)
        full[: self.d] = w / math.sqrt(self.d)
        mat = full.view(self.a, self.b)
        return [self._r[k] @ mat @ self._q[k].T for k in range(len(self.sites))]

    def describe(self) -> dict:
        return {"p": self.p, "d": self.d, "seed": self.seed, "kind": "kronecker", "sketch": [self.a, self.b],
                "sites": len(self.sites)}



def set_low_rank_update(site: LoraSite, delta: torch.Tensor) -> float:
    """Make a zero-B LoRA site hold the best rank-r approximation of the update ``delta`` (o × i).

    LoRA's output adds s·B A x; the features differentiate M = B A, so B A := U_r S_r Vᵀ_r
    (split as B = U_r √S_r, A = √S_r Vᵀ_r). Returns the share of ‖delta‖² that rank r keeps.
    Raises if B is not zero (the update is relative to θ*, where B = 0).
    """
    b_w, a_w = site.output_side.weight, site.input_side.weight
    if b_w.detach().any():
        raise ValueError(f"LoRA site {site.name}: B is not zero; a full-rank update is defined relative to θ*")
    r = a_w.shape[0]
    u, sv, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    root = sv[:r].sqrt()
    with torch.no_grad():
        b_w.copy_((u[:, :r] * root).to(b_w.dtype))
        a_w.copy_((root[:, None] * vh[:r]).to(a_w.dtype))
    total = float((sv**2).sum())
    return float((sv[:r] ** 2).sum()) / total if total > 0 else 1.0
