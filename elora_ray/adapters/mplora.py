"""MPLoRA (multi-path LoRA, ``papers/mplora_paper.md``) on top of PEFT's LoRA layers.

MPLoRA shares the down-projection A (r × d_in) across n paths; path i has its own
B_i (d_out/n × r) and the outputs of the paths are concatenated (paper eq. 7):

    h = W x + concat_i(B_i A x) = W x + [B_1; …; B_n] A x

so the forward pass *is* a LoRA forward with B = [B_1; …; B_n] (row blocks), with exactly
LoRA's parameter count. What makes it MPLoRA is the training objective (paper eq. 8): an
orthogonality penalty λ Σ_{i<j} ‖B_iᵀ B_j‖²_F between the paths, which this module computes
over the row blocks of every ``lora_B`` weight. B_iᵀB_j needs blocks of equal height, so
every adapted layer's d_out must be divisible by n (checked when the adapter is attached).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import AdapterConfig
from ..errors import ModelError
from .families import AdapterFamily, register_family
from .lora import DEFAULT_LORA_TARGETS, lora_config


def path_blocks(lora_b_weight: torch.Tensor, paths: int) -> tuple[torch.Tensor, ...]:
    """The B_i of one layer: row blocks of the PEFT ``lora_B`` weight (d_out × r)."""
    if lora_b_weight.shape[0] % paths:
        raise ValueError(f"MPLoRA: output size {lora_b_weight.shape[0]} is not divisible by {paths} paths")
    return torch.chunk(lora_b_weight, paths, dim=0)


def orthogonality_loss(model: nn.Module, paths: int, adapter_name: str = "default") -> torch.Tensor:
    """Σ over adapted layers and path pairs i<j of ‖B_iᵀ B_j‖²_F (unweighted)."""
    total: torch.Tensor | None = None
    for module in model.modules():
        lora_b = getattr(module, "lora_B", None)
        if not isinstance(lora_b, nn.ModuleDict) or adapter_name not in lora_b:
            continue
        blocks = path_blocks(lora_b[adapter_name].weight, paths)
        for i in range(len(blocks)):
            for j in range(i + 1, len(blocks)):
                term = (blocks[i].T @ blocks[j]).pow(2).sum()
                total = term if total is None else total + term
    if total is None:
        raise ValueError("orthogonality_loss: the model has no LoRA layers")
    return total


def check_paths(model: nn.Module, cfg: AdapterConfig, targets: list[str] | str) -> None:
    """Every adapted layer's output size must split into ``adapter.paths`` equal blocks."""
    names = [targets] if isinstance(targets, str) else targets
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name.split(".")[-1] in names and m.out_features % cfg.paths:
            raise ModelError(
                f"adapter.paths={cfg.paths}: layer {name} has {m.out_features} outputs, not divisible "
                "into equal paths (MPLoRA's B_i^T B_j needs equal blocks); choose a divisor"
            )


def orthogonality_penalty(model: nn.Module, cfg: AdapterConfig) -> torch.Tensor | None:
    return cfg.orth_lambda * orthogonality_loss(model, cfg.paths) if cfg.orth_lambda > 0 else None


MPLORA = register_family(AdapterFamily("mplora", lora_config, DEFAULT_LORA_TARGETS, check=check_paths,
                                       penalty=orthogonality_penalty))
