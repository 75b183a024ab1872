"""Issue 38's decoder benchmarks in their smoke-test modes (tiny-llama on three embedded tasks), into a scratch
folder: ``benchmarks/decoder_ensemble.py --quick`` (the ensemble, the baselines and the two other affinity kinds'
ensembles) and then ``benchmarks/positive_transfer.py --quick`` in the same run folders, which must reuse the
ensemble benchmark's single-task, all-task and group adapters; then a rerun that trains nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK_NAME = "decoder_quick"


def _run(script: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    return proc


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("decoder_bench")
    env = {**os.environ, "ELORA_BENCH_RESULTS": str(out / "results"), "ELORA_BENCH_RUNS": str(out / "runs"),
           "HF_HUB_OFFLINE": "1"}
    _run("decoder_ensemble.py", env)
    _run("positive_transfer.py", env)
    return out, env


@pytest.mark.slow
def test_decoder_ensemble_quick_writes_every_method_and_affinity_kind(bench):
    out, _ = bench
    results = out / "results"
    data = json.loads((results / f"ensemble_accuracy_{QUICK_NAME}.json").read_text())
    for suffix in (".md", ".png"):
        assert (results / f"ensemble_accuracy_{QUICK_NAME}{suffix}").stat().st_size > 0
    methods = data["aggregate"]["methods"]
    assert {"ensemble", "single_adapter", "single_qlora", "per_task_adapters", "mtl_ft", "random_groups",
            "ensemble_transfer", "ensemble_paper"} <= set(methods)
    for m in methods.values():  # the paper's Table 4 columns
        assert 0.0 <= m["avg_accuracy_mean"] <= 1.0
        assert m["train_flops_mean"] > 0 and m["peak_memory_mb_mean"] > 0 and m["wall_s_mean"] >= 0
    assert data["kind"] == "first_order" and data["variants"] == ["transfer", "paper"] and not data["pending_variants"]
    assert data["seeds"] == [0] and set(data["variant_groups"]) == {"transfer", "paper"}
    pairs = {(p["a"], p["b"]) for p in data["aggregate"]["paired"] + data["aggregate"]["extra_paired"]}
    assert {("ensemble", "single_adapter"), ("ensemble", "single_qlora"), ("per_task_adapters", "single_adapter"),
            ("ensemble_transfer", "single_adapter"), ("ensemble_paper", "single_adapter")} <= pairs
    assert {r["task"] for r in data["aggregate"]["negative_transfer"]} == set(methods["ensemble"]["per_task_mean"])
    assert len(data["aggregate"]["paper_claims"]) == 3
    # the seed and each variant are recorded on their own, so a later session resumes from them
    seeds = results / f"ensemble_accuracy_{QUICK_NAME}_seeds"
    assert {p.name for p in seeds.glob("*.json")} == {"seed0.json", "seed0_affinity_transfer.json", "seed0_affinity_paper.json"}
    md = (results / f"ensemble_accuracy_{QUICK_NAME}.md").read_text()
    assert "EnsembleLoRA, transfer affinity" in md and "Negative transfer of the shared adapter" in md
    assert "paper's Table 4 claims" in md


@pytest.mark.slow
def test_positive_transfer_quick_reuses_the_ensemble_runs_adapters(bench):
    out, _ = bench
    results = out / "results"
    data = json.loads((results / f"positive_transfer_{QUICK_NAME}.json").read_text())
    assert (results / f"positive_transfer_{QUICK_NAME}.png").stat().st_size > 0
    assert data["types"] == ["lora", "qlora"] and data["seeds"] == [0] and len(data["tasks"]) == 3
    # 3 singles + 3 pairs + all three tasks, per adapter type; every one finished
    assert data["jobs_planned"] == data["jobs_done"] == 14
    reused = {r["method"] for r in data["rows"] if r["reused"]}
    # the all-task LoRA and QLoRA adapters are the pipeline's baselines; the LoRA singles are its per-task adapters
    # (or a one-task ensemble group); the LoRA pairs may be ensemble or random groups
    assert {"single_adapter", "single_qlora"} <= reused and reused <= {"single_adapter", "single_qlora", "per_task_adapters",
                                                                         "ensemble", "random_groups"}
    assert data["jobs_reused"] >= 5
    summary = {(s["type"], s["size"]): s for s in data["summary"]}
    assert set(summary) == {("lora", "2"), ("lora", "all"), ("qlora", "2"), ("qlora", "all")}
    for s in summary.values():
        assert 0.0 <= s["rate_test_loss"] <= 1.0 and list(s["rate_test_loss_per_seed"]) in (["0"], [0])
        assert s["pairs_i_S"] == (6 if s["size"] == "2" else 3)
    assert summary[("lora", "all")]["paper"] == 0.40 and summary[("qlora", "2")]["paper"] == 0.26
    # every (i, S) is measured against the same seed and type's single-task adapter
    assert len(data["transfers"]) == 2 * (6 + 3)
    assert all(e["theta_star_acc"] is not None and e["lora_single_acc"] is not None for e in data["per_task"])
    md = (results / f"positive_transfer_{QUICK_NAME}.md").read_text()
    assert "| lora | pairs (3) |" in md and "| qlora | all tasks (1) |" in md


@pytest.mark.slow
def test_rerun_resumes_without_training(bench):
    out, env = bench
    before = json.loads((out / "results" / f"positive_transfer_{QUICK_NAME}.json").read_text())
    proc = _run("positive_transfer.py", env)
    assert not re.search(r"trained on \d+ tasks", proc.stderr + proc.stdout)  # every adapter found done
    after = json.loads((out / "results" / f"positive_transfer_{QUICK_NAME}.json").read_text())
    assert after["summary"] == before["summary"]
    proc = _run("decoder_ensemble.py", env)
    assert "reusing" in proc.stdout and "transfer affinity" in proc.stdout
    # --render-only writes the same result from the finished adapters without taking the run folders' lock
    proc = _run("positive_transfer.py", env, "--render-only")
    assert not re.search(r"trained on \d+ tasks", proc.stderr + proc.stdout)
    rendered = json.loads((out / "results" / f"positive_transfer_{QUICK_NAME}.json").read_text())
    assert rendered["summary"] == before["summary"] and rendered["jobs_reused"] == before["jobs_reused"]
