"""`elora analyze sharpness`: variants, the ensemble Hessian probes against finite differences,
artifacts, resume, and clear config errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from elora_ray.analyze.generalization import Variant, adapter_weights, ensemble_loss_fn, variants_for
from elora_ray.analyze.sharpness import hutchinson_trace
from elora_ray.cli import main
from elora_ray.config import RunConfig, load_config
from elora_ray.errors import ConfigError

BASE = ["--set", "model.name_or_path=tiny-bert", "--set", "suite.samples_per_task=40", "--set", "suite.tasks_per_group=[1]",
        "--set", "analyze.sharpness.ranks=[2,4]", "--set", "analyze.sharpness.ensemble_sizes=[2]",
        "--set", "analyze.sharpness.points=2", "--set", "analyze.sharpness.probes=2", "--set", "analyze.sharpness.epochs=2"]


def test_variants_fix_the_total_rank():
    cfg = RunConfig.model_validate({"analyze": {"sharpness": {"ranks": [16, 4], "ensemble_sizes": [4, 2, 1]}}})
    vs = variants_for(cfg)
    assert [v.name for v in vs] == ["r4", "r16", "2x8", "4x4"]
    assert {v.total_rank for v in vs if v.k > 1} == {16}
    cfg = RunConfig.model_validate({"analyze": {"sharpness": {"ranks": [4], "total_rank": 8, "ensemble_sizes": [2]}}})
    assert [v.name for v in variants_for(cfg)] == ["r4", "r8", "2x4"]  # the k = 1 point of the ensemble curve
    assert Variant(2, 4).total_rank == 8


def test_total_rank_must_split_evenly(tmp_path):
    with pytest.raises(ConfigError, match=r"analyze\.sharpness.*total_rank 16 is not divisible by k=3"):
        load_config(None, ["analyze.sharpness.ranks=[16]", "analyze.sharpness.ensemble_sizes=[3]"])


def test_bottleneck_adapters_are_refused_with_a_reason(tmp_path, capsys):
    assert main(["analyze", "sharpness", "--out", str(tmp_path / "r"), *BASE, "--set", "adapter.type=adapter"]) == 2
    err = capsys.readouterr().err
    assert "adapter.type" in err and "reduction_factor" in err and "Traceback" not in err


def test_ensemble_hessian_probes_match_finite_differences():
    """Each Hutchinson probe vᵀHv of the combined loss (two members, unequal weights) equals the
    central difference vᵀ(∇L(θ+εv) − ∇L(θ−εv)) / 2ε computed without double back-propagation."""
    from elora_ray.featurize.model_at_init import build_model_at_init
    from elora_ray.models.classifier import TaskSpec
    from elora_ray.tasks.suite import generate_suite

    cfg = load_config(None, ["model.name_or_path=tiny-bert", "suite.samples_per_task=20", "suite.tasks_per_group=[1]",
                             "adapter.rank=1"])
    task = generate_suite(cfg.suite)[0]
    members = []
    for j in range(2):
        mcfg = cfg.model_copy(update={"seed": j})
        peft_model, model = build_model_at_init(mcfg, [TaskSpec.of(task)], train_heads=True)
        peft_model.double()
        # Move the adapter off its zero-B initialisation so every block of the Hessian is non-trivial.
        with torch.no_grad():
            for p in adapter_weights([(peft_model, model)]):
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(j), dtype=p.dtype))
        members.append((peft_model, model))
    alpha = [0.3, 0.7]
    rows = [(task.name, task.splits["train"][0])]
    loss_fn = ensemble_loss_fn(members, alpha, {task.name: task}, rows, task.num_labels)
    params = adapter_weights(members)
    assert len(params) > 0 and all(p.dtype == torch.float64 for p in params)

    est = hutchinson_trace(loss_fn, params, probes=3, seed=5)

    gen = torch.Generator().manual_seed(5)
    eps = 1e-4
    for value in est.probes:
        vs = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.dtype) for p in params]

        def grad_at(sign: float) -> list[torch.Tensor]:
            with torch.no_grad():
                for p, v in zip(params, vs):
                    p.add_(sign * eps * v)
            g = torch.autograd.grad(loss_fn(), params)
            with torch.no_grad():
                for p, v in zip(params, vs):
                    p.sub_(sign * eps * v)
            return g

        plus, minus = grad_at(1.0), grad_at(-1.0)
        fd = float(sum(((gp - gm) * v).sum() for gp, gm, v in zip(plus, minus, vs)) / (2 * eps))
        assert value == pytest.approx(fd, rel=1e-4, abs=1e-7)
    assert any(abs(v) > 1e-3 for v in est.probes)  # not a vacuous comparison of zeros


@pytest.mark.slow
def test_analyze_sharpness_writes_artifacts_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["analyze", "sharpness", "--out", str(out), *BASE]) == 0
    assert "Sharpness and generalization gap" in capsys.readouterr().out
    d = out / "analyze" / "sharpness"
    table = pd.read_parquet(d / "results.parquet")
    assert list(table.variant) == ["r2", "r4", "2x2"]
    # Equal total rank ⇒ equal adapter size: the ensemble of two rank-2 adapters vs one rank-4 adapter.
    sizes = dict(zip(table.variant, table.adapter_parameters))
    assert sizes["2x2"] == sizes["r4"] == 2 * sizes["r2"]
    summary = json.loads((d / "summary.json").read_text())
    by_variant = {v["variant"]: v for v in summary["variants"]}
    assert sum(by_variant["2x2"]["weights"]) == pytest.approx(1.0) and min(by_variant["2x2"]["weights"]) >= 0
    for v in summary["variants"]:
        assert v["gap"] == pytest.approx(v["test_loss"] - v["train_loss"])
        assert v["trace_max"] == pytest.approx(max(v["traces"])) and len(v["traces"]) == 2
    assert (out / "plots" / "sharpness.png").stat().st_size > 0

    # A rerun reuses every measured variant; new Hessian settings re-measure.
    stamp = (d / "variants" / table.task[0] / "2x2.json").stat().st_mtime_ns
    assert main(["analyze", "sharpness", "--out", str(out), *BASE]) == 0
    assert (d / "variants" / table.task[0] / "2x2.json").stat().st_mtime_ns == stamp
    assert main(["analyze", "sharpness", "--out", str(out), *BASE, "--set", "analyze.sharpness.points=3"]) == 0
    again = json.loads((d / "summary.json").read_text())
    assert all(len(v["traces"]) == 3 for v in again["variants"])
