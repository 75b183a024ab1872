"""The full-rank (LoRA update matrix) sketch against an independent per-sample autograd loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from elora_ray.config import AdapterConfig, ModelConfig, RunConfig
from elora_ray.featurize.gradients import gold_log_odds
from elora_ray.featurize.model_at_init import build_model_at_init
from elora_ray.featurize.update_sketch import PerSampleUpdateSketch, lora_sites, sketch_shape
from elora_ray.featurize.worker import gradient_layers_for
from tiny_rows import ROWS as ALL_ROWS
from tiny_rows import TASKS, batch

ROWS = ALL_ROWS[:4]


def _model(adapter: str = "lora"):
    cfg = RunConfig(model=ModelConfig(name_or_path="tiny-bert", max_length=24), adapter=AdapterConfig(type=adapter))
    peft_model, base = build_model_at_init(cfg, TASKS)
    gradient_layers_for(peft_model)  # requires_grad on the adapter layers only, as featurize does
    return peft_model, base


def _reference_update_gradients(peft_model, base, sites) -> list[torch.Tensor]:
    """Per sample, alone (no padding): ∂h/∂M at each site = s · ∂h/∂W_base (y = W x + s·M x)."""
    bases = []
    for s in sites:
        layer = peft_model.get_submodule(s.name)
        bases.append((layer.base_layer.weight, float(layer.scaling["default"])))
    for w, _ in bases:
        w.requires_grad_(True)
    out = []
    try:
        for row in ROWS:
            enc = base.tokenize([row[0]], [row[1]], [row[2]])
            h = gold_log_odds(peft_model(**enc), torch.tensor([row[3]]))[0]
            grads = torch.autograd.grad(h, [w for w, _ in bases])
            out.append([g * sc for g, (_, sc) in zip(grads, bases)])
    finally:
        for w, _ in bases:
            w.requires_grad_(False)
    return out


def test_sketch_equals_its_definition_on_exact_update_gradients():
    peft_model, base = _model()
    sites = lora_sites(peft_model)
    assert len(sites) >= 2 and all(s.size == s.output_side.out_features * s.input_side.in_features for s in sites)
    d = 50
    sk = PerSampleUpdateSketch(sites, d, seed=3)
    enc, y = batch(base, ROWS)
    with sk as cap:
        phi = cap.backward(gold_log_odds(peft_model(**enc), y))
    assert phi.shape == (len(ROWS), d)
    ref = _reference_update_gradients(peft_model, base, sites)
    for b, per_site in enumerate(ref):
        expect = torch.zeros(sk.a * sk.b)
        for k, g in enumerate(per_site):
            r, q = sk.sketch_matrices(k)
            expect += (r.T @ g @ q).reshape(-1)
        torch.testing.assert_close(phi[b], expect[:d] / math.sqrt(d), rtol=1e-4, atol=1e-6)


def test_sketch_preserves_inner_products_of_the_update_gradients():
    peft_model, base = _model()
    sites = lora_sites(peft_model)
    ref = _reference_update_gradients(peft_model, base, sites)
    g = torch.stack([torch.cat([x.reshape(-1) for x in per_site]) for per_site in ref]).double()
    exact = (g @ g.T).numpy()
    enc, y = batch(base, ROWS)
    estimates = []
    for seed in range(20):
        with PerSampleUpdateSketch(sites, 400, seed=seed) as cap:
            phi = cap.backward(gold_log_odds(peft_model(**enc), y)).double()
        estimates.append((phi @ phi.T).numpy())
    mean = np.mean(estimates, axis=0)
    # Unbiased: the 20-seed average is close to the exact Gram matrix, relative to its scale.
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    assert np.abs(mean - exact).max() / scale.max() < 0.1
    # And a single sketch of d = 400 already ranks the diagonal right.
    assert np.all(np.diag(estimates[0]) > 0)


def test_sketch_is_seeded_and_differs_from_adapter_gradients():
    peft_model, base = _model()
    sites = lora_sites(peft_model)
    enc, y = batch(base, ROWS)
    outs = []
    for seed in (5, 5, 6):
        with PerSampleUpdateSketch(sites, 64, seed=seed) as cap:
            outs.append(cap.backward(gold_log_odds(peft_model(**enc), y)))
    torch.testing.assert_close(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


def test_sketch_shape_covers_d():
    for d in (1, 2, 3, 7, 400, 401, 1000):
        a, b = sketch_shape(d)
        assert a * b >= d and a * b < d + a + b


def test_full_rank_is_refused_for_bottleneck_adapters():
    with pytest.raises(ValueError, match="full_rank"):
        RunConfig(adapter=AdapterConfig(type="adapter"), featurize={"gradient": "full_rank"})
    peft_model, _ = _model("adapter")
    with pytest.raises(ValueError, match="no lora_A"):
        lora_sites(peft_model)


def test_update_matrices_are_the_exact_adjoint_of_the_sketch():
    peft_model, base = _model()
    sites = lora_sites(peft_model)
    sk = PerSampleUpdateSketch(sites, 37, seed=11)
    ref = _reference_update_gradients(peft_model, base, sites)
    w = torch.randn(37, generator=torch.Generator().manual_seed(0))
    deltas = sk.update_matrices(w)
    enc, y = batch(base, ROWS)
    with sk as cap:
        phi = cap.backward(gold_log_odds(peft_model(**enc), y))
    for b, per_site in enumerate(ref):
        direct = sum(float((g * dm).sum()) for g, dm in zip(per_site, deltas))
        assert direct == pytest.approx(float(phi[b] @ w), rel=1e-4, abs=1e-7)
    with pytest.raises(ValueError, match="37"):
        sk.update_matrices(torch.zeros(5))


def test_low_rank_update_moves_the_output_by_the_truncated_update():
    from elora_ray.featurize.update_sketch import set_low_rank_update

    peft_model, base = _model()
    site = lora_sites(peft_model)[0]
    r = site.input_side.weight.shape[0]
    o, i = site.output_side.out_features, site.input_side.in_features
    gen = torch.Generator().manual_seed(1)
    low = torch.randn(o, r, generator=gen) @ torch.randn(r, i, generator=gen)
    kept = set_low_rank_update(site, low)
    assert kept == pytest.approx(1.0, abs=1e-6)  # a rank-r update fits exactly
    torch.testing.assert_close(site.output_side.weight @ site.input_side.weight, low, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not zero"):
        set_low_rank_update(site, low)
    site.output_side.weight.data.zero_()
    kept = set_low_rank_update(site, torch.randn(o, i, generator=gen))
    assert 0.0 < kept < 1.0
