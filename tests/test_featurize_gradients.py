"""Per-sample projected gradients against an independent per-sample autograd loop."""

from __future__ import annotations

import math

import pytest
import torch

from elora_ray.config import AdapterConfig, ModelConfig, RunConfig
from elora_ray.featurize.gradients import PerSampleGradients, gold_log_odds, gradient_layers
from elora_ray.featurize.model_at_init import build_model_at_init
from elora_ray.featurize.projection import JLProjector
from elora_ray.featurize.worker import gradient_layers_for
from tiny_rows import ROWS, TASKS, batch


def _model(name: str, adapter: str, **akw):
    cfg = RunConfig(model=ModelConfig(name_or_path=name, max_length=24), adapter=AdapterConfig(type=adapter, **akw))
    return build_model_at_init(cfg, TASKS)


def _reference(peft_model, base, layers):
    """Plain loop: one sample at a time (its own tokenisation, no padding), autograd.grad."""
    params = []
    for g in layers:
        params.append(g.module.weight)
        if g.module.bias is not None:
            params.append(g.module.bias)
    out = []
    for row in ROWS:
        enc, y = batch(base, [row])
        h = gold_log_odds(peft_model(**enc), y)[0]
        grads = torch.autograd.grad(h, params, allow_unused=True)
        out.append(torch.cat([(gr if gr is not None else torch.zeros_like(p)).reshape(-1) for gr, p in zip(grads, params)]))
    return torch.stack(out)


def _perturb(peft_model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if any(k in name for k in ("lora_B", "bottleneck_up")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.mark.parametrize(
    "model,adapter,trained",
    [
        ("tiny-bert", "lora", False),
        ("tiny-bert", "lora", True),
        ("tiny-bert", "adapter", False),
        ("tiny-bert", "adapter", True),
        ("tiny-llama", "lora", False),
        ("tiny-llama", "mplora", True),
        ("tiny-bert", "qlora", False),
    ],
)
def test_batched_per_sample_gradients_match_a_per_sample_loop(model, adapter, trained):
    akw = {"paths": 2} if adapter == "mplora" else {}
    peft_model, base = _model(model, adapter, **akw)
    if trained:
        _perturb(peft_model)
    layers = gradient_layers_for(peft_model)
    roles = {g.name.split(".")[-2] for g in layers}
    if trained:
        assert roles == ({"lora_A", "lora_B"} if adapter != "adapter" else {"bottleneck_down", "bottleneck_up"})
    else:  # at init only the zero output side has non-zero gradients
        assert roles == ({"lora_B"} if adapter != "adapter" else {"bottleneck_up"})
    enc, y = batch(base, ROWS)
    with PerSampleGradients(layers) as psg:
        grads = psg.backward(gold_log_odds(peft_model(**enc), y))
    ref = _reference(peft_model, base, layers)
    assert grads.shape == ref.shape
    assert ref.abs().max() > 0
    rel = (grads - ref).norm(dim=1) / ref.norm(dim=1)
    assert rel.max() < 1e-4, rel
    # And projected: batched projection equals projecting each reference gradient densely.
    proj = JLProjector(grads.shape[1], 16, seed=3, block_rows=7)
    dense = proj.dense()
    p_rel = (proj.project(grads) - ref @ dense).norm(dim=1) / (ref @ dense).norm(dim=1)
    assert p_rel.max() < 1e-4


def test_init_gradients_wrt_a_are_exactly_zero():
    peft_model, base = _model("tiny-bert", "lora")
    for n, p in peft_model.named_parameters():
        p.requires_grad_("lora_" in n)
    layers = gradient_layers(peft_model, which="all")
    enc, y = batch(base, ROWS)
    with PerSampleGradients(layers) as psg:
        grads = psg.backward(gold_log_odds(peft_model(**enc), y))
    offset = 0
    for g in layers:
        size = g.size
        block = grads[:, offset : offset + size]
        if "lora_A" in g.name:
            assert block.abs().max() == 0
        else:
            assert block.abs().max() > 0
        offset += size


def test_gold_log_odds_matches_definition():
    logits = torch.tensor([[2.0, -1.0, float("-inf")], [0.3, 0.1, 5.0], [40.0, -40.0, float("-inf")]])
    y = torch.tensor([0, 1, 0])
    h = gold_log_odds(logits, y)
    for i in range(2):
        p = torch.softmax(logits[i], -1)[y[i]]
        assert math.isclose(float(h[i]), math.log(p / (1 - p)), rel_tol=1e-5)
    assert math.isclose(float(h[2]), 80.0, rel_tol=1e-5)  # finite where 1 - p underflows


def test_projection_is_seeded_blockwise_and_preserves_geometry():
    a = JLProjector(1000, 400, seed=5, block_rows=128)
    b = JLProjector(1000, 400, seed=5, block_rows=128, cache_limit_mb=0)
    assert torch.equal(a.dense(), b.dense())
    assert not torch.equal(a.dense(), JLProjector(1000, 400, seed=6, block_rows=128).dense())
    r = JLProjector(1000, 400, seed=5, kind="rademacher", block_rows=128).dense()
    assert torch.allclose(r.abs(), torch.full_like(r, 1 / 20))
    g = torch.randn(20, 1000, generator=torch.Generator().manual_seed(0))
    pg = a.project(g)
    ratio = pg.norm(dim=1) / g.norm(dim=1)
    assert (ratio - 1).abs().max() < 0.25
    cos = torch.nn.functional.cosine_similarity(g[:1], g[1:])
    pcos = torch.nn.functional.cosine_similarity(pg[:1], pg[1:])
    assert (cos - pcos).abs().max() < 0.2
    w = torch.randn(400)
    assert torch.allclose(a.back_project(w), a.dense() @ w, atol=1e-5)


def test_projection_is_kept_on_a_gpu_within_a_quarter_of_its_memory(monkeypatch):
    """``featurize.cache_limit_mb: auto``: a P of p = 200,000 gradient coordinates × d = 400 (305 MiB,
    the size of a Llama-1B LoRA's) is regenerated per batch under the CPU budget (256 MiB) but kept on
    an 80 GB GPU; a number is used as given. The matrix is the same either way (CPU generators,
    seeded per block)."""
    from elora_ray.featurize.projection import cache_budget_mb

    assert cache_budget_mb("auto", "cpu") == 256.0 and cache_budget_mb(12, "cuda:0") == 12.0

    class Props:
        total_memory = 80 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: Props)
    assert cache_budget_mb("auto", "cuda:0") == 0.25 * 80 * 1024
    p = 200_000
    assert not JLProjector(p, 400, seed=0).cached
    on_gpu = JLProjector(p, 400, seed=0, device="cuda:0")  # nothing is allocated before a block is used
    assert on_gpu.cached and on_gpu.describe()["cached_on"] == "cuda:0"
    assert not JLProjector(p, 400, seed=0, cache_limit_mb=0, device="cuda:0").cached
