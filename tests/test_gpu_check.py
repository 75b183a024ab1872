"""benchmarks/gpu_check.py on a CPU (``--quick``): every code path of ours it checks on a GPU runs and is
recorded, a missed speed target sets the exit status, and a row that runs out of memory is recorded as
that row's result while the next rows still run. One run of the script (< 60 s on 2 idle cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_check  # noqa: E402  (light: torch and Ray load inside main())

OOM_ROW = "featurize/qlora"  # not a target row: the targets are still measured


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray instance
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--out", str(out),
         "--targets-scale", "1000", "--inject-oom", OOM_ROW],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    result = out / "gpu_check_quick.json"
    assert result.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(result.read_text()), out


def _rows(payload: dict) -> dict[str, dict]:
    return {r["row"]: r for r in payload["rows"] if r["model"] == "tiny-llama"}


def test_every_code_path_runs_through_our_code_and_is_recorded(quick_run):
    proc, payload, out = quick_run
    rows = _rows(payload)
    assert list(rows) == gpu_check.ROWS, list(rows)
    assert (out / "gpu_check_quick.md").read_text().startswith("# GPU check")
    # the device is printed first and recorded
    assert proc.stdout.splitlines()[0].startswith("device: no CUDA device (cpu"), proc.stdout[:500]
    assert payload["device"]["device"] == "cpu" and payload["device"]["torch"] and payload["device"]["bitsandbytes"]
    fr, ad = rows["featurize/full_rank"], rows["featurize/adapter"]
    assert fr["status"] == "ok" and fr["gradient"] == "full_rank" and fr["adapter"] == "lora" and fr["finite"]
    assert ad["status"] == "ok" and ad["gradient"] == "adapter" and ad["finite"]
    assert fr["precision"] == "bf16"  # --quick takes the autocast paths on the CPU too
    for name in ("plain_fwd_bwd", "per_sample_loop"):
        assert rows[name]["status"] == "ok" and rows[name]["samples_per_s"] > 0
    assert rows["per_sample_loop"]["batch"] == 1 and rows["per_sample_loop"]["for_batch"] == 32
    ev = rows["evaluate/autocast"]
    assert ev["status"] == "ok" and ev["precision"] == "bf16" and ev["argmax_agreement_vs_fp32"] > 0.9
    tr = rows["train/ray_worker"]
    assert tr["status"] == "ok", tr
    assert tr["ddp_backend"] == "gloo" and tr["world_size"] == 1 and tr["steps"] == payload["settings"]["train_steps"]
    tf32 = rows["featurize/full_rank_tf32"]
    assert (tf32["status"], tf32["reason"]) == ("skipped", "no CUDA device")
    assert ad["compared_with_loop"] > 0 and ad["max_rel_error_vs_loop"] < 0.05  # batched hooks = per-sample autograd
    # the memory plan: its own row, and each stage's row compared with it (or why not)
    assert rows["plan"]["status"] in ("ok", "unavailable")
    for name in ("featurize/full_rank", "featurize/adapter", "evaluate/autocast", "train/ray_worker"):
        plan = rows[name]["plan"]
        if isinstance(plan, str):
            assert plan.startswith("unavailable: "), plan
        else:
            assert plan["stage"] in ("featurize", "train", "evaluate", "outputs")
            assert plan["host_peak_bytes"] > 0 and plan["measured_host_peak_bytes"] > 0


def test_an_out_of_memory_row_is_recorded_and_the_next_rows_still_run(quick_run):
    proc, payload, _ = quick_run
    rows = _rows(payload)
    oom = rows[OOM_ROW]
    assert oom["status"] == "oom" and "out of memory" in oom["error"], oom
    after = gpu_check.ROWS[gpu_check.ROWS.index(OOM_ROW) + 1:]
    assert [rows[r]["status"] for r in after] == ["skipped", "ok", "ok"]
    assert any(f.startswith(f"row failed: tiny-llama {OOM_ROW}: oom") for f in payload["failures"])


def test_a_missed_target_sets_the_exit_status_and_is_named(quick_run):
    proc, payload, _ = quick_run
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert payload["exit_code"] == 1 and payload["status"] == "target missed"
    missed = [f for f in payload["failures"] if f.startswith("target missed")]
    assert len(missed) == 4, missed  # both featurize paths vs plain fwd+bwd and vs the per-sample loop
    assert any("featurize/full_rank" in f and "plain forward+backward (needs ≥ 800×)" in f for f in missed)
    assert "gpu_check: target missed: tiny-llama featurize/full_rank" in proc.stdout
    # the same measurements pass at the --quick default scale (0): the exit status came from the targets
    checks, failures = gpu_check.evaluate_targets(payload["rows"], 0.0, cuda=False)
    assert len(checks) == 4 and all(c["met"] for c in checks) and not failures


def test_memory_over_the_plan_is_a_missed_target_on_a_gpu():
    plan = {"node": "x", "stages": {"featurize": {"device_peak_bytes": 100, "host_peak_bytes": 500},
                                    "outputs": {"device_peak_bytes": 100, "host_peak_bytes": 500}}}
    measured = {"peak_device_bytes": 150 * 2**20, "peak_host_bytes": 10}
    over = gpu_check.compare_with_plan(measured, plan, "featurize")
    assert over["within_plan"] is False and over["device_ratio"] == 1.5 * 2**20
    assert gpu_check.compare_with_plan({"peak_device_bytes": 50}, plan, ("evaluate", "outputs"))["stage"] == "outputs"
    missing = "unavailable: ImportError: no plan"
    assert gpu_check.compare_with_plan({}, missing, "train") == missing
    assert gpu_check.compare_with_plan({}, plan, "train").startswith("unavailable: the plan has no 'train' stage")
    rows = [{"model": "m", "row": "featurize/full_rank", "status": "ok", "samples_per_s": 10.0, "plan": over}]
    _, failures = gpu_check.evaluate_targets(rows, 1.0, cuda=True)
    assert failures == ["memory over plan: m featurize/full_rank peaked at 150.00 MiB on the GPU, "
                        "the plan's featurize stage says 100 B"]


def test_the_plan_is_recorded_as_unavailable_when_it_cannot_be_built(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_plan(name, *a, **k):
        if name == "elora_ray.plan":
            raise ImportError("no module named elora_ray.plan")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_plan)
    assert gpu_check.plan_for(object()) == "unavailable: ImportError: no module named elora_ray.plan"
