"""``make bench-quick``: every benchmark script in its smoke-test mode, in a scratch folder.

Checks that each script still runs end to end and writes its JSON + markdown (and plot), then
builds a summary page from those results. The numbers are NOT results (tiny models, tiny data,
shared CI machines, two scripts at a time) and never touch ``benchmarks/results/``: everything
goes under ``--out`` (default: a fresh temporary folder). CI runs this after the test suite; it
takes < 5 min on 2 cores.

    python benchmarks/quick.py [--out DIR] [--only sharpness,scaling] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, script arguments, result files the script must write under the results folder), longest first
# so that two at a time finish together
SMOKE: list[tuple[str, list[str], list[str]]] = [
    ("scaling", ["scaling.py", "--quick"], ["scaling_quick.json", "scaling_quick.png"]),
    ("affinity_scale", ["affinity_scale.py", "--quick"], ["affinity_scale_quick.json", "affinity_scale_quick.md"]),
    ("estimation_fidelity", ["estimation_fidelity.py", "--quick", "--dims", "32"], ["estimation_fidelity_quick.json", "estimation_fidelity_quick.png"]),
    ("ensemble_accuracy", ["ensemble_accuracy.py", "--quick", "--seeds", "0"], ["ensemble_accuracy_quick.json", "ensemble_accuracy_quick.png"]),
    ("decoder_ensemble", ["decoder_ensemble.py", "--quick"],
     ["ensemble_accuracy_decoder_quick.json", "ensemble_accuracy_decoder_quick.md", "ensemble_accuracy_decoder_quick.png"]),
    ("positive_transfer", ["positive_transfer.py", "--quick", "--name", "decoder_quick_transfer"],
     ["positive_transfer_decoder_quick_transfer.json", "positive_transfer_decoder_quick_transfer.png"]),
    ("training_sweep", ["training_sweep.py", "--quick", "--points", "current", "linear_1e-3", "--epochs", "2"],
     ["training_sweep_quick.json", "training_sweep_quick.png"]),
    ("affinity_planted", ["affinity_planted.py", "--quick"], ["affinity_planted_quick.json", "affinity_planted_quick.md"]),
    ("federated", ["federated_shakespeare.py", "--quick", "--fresh", "--set", "federated.min_clients=24",
                   "--set", "federated.max_clients=24", "--set", "federated.num_groups=2", "--set", "federated.num_subsets=40",
                   "--set", "federated.subset_size=4", "--set", "federated.rounds=1"], ["federated_quick.json", "federated_quick.png"]),
    ("estimate_speed", ["estimate_speed.py", "--quick"], ["estimate_speed_quick.json"]),
    ("sharpness", ["sharpness.py", "--quick"], ["sharpness_quick.json", "sharpness_quick.png"]),
    ("featurize_speed", ["featurize_speed.py", "--quick"], ["featurize_speed_quick.json", "featurize_speed_quick.png"]),
    ("gpu_check", ["gpu_check.py", "--quick"], ["gpu_check_quick.json", "gpu_check_quick.md"]),
    ("memory_plan", ["memory_plan.py", "--quick"], ["memory_plan_quick.json", "memory_plan_quick.md"]),
    ("serve_load", ["serve_load.py", "--quick"], ["serve_load_quick.json", "serve_load_quick.md"]),
    ("add_task", ["add_task.py", "--quick"], ["add_task_quick.json", "add_task_quick.md"]),
    ("fidelity_surrogates", ["fidelity_surrogates.py", "--quick"], ["fidelity_surrogates_quick.json", "fidelity_surrogates_quick.png"]),
    ("affinity_halves", ["affinity_halves.py", "--quick"], ["affinity_halves_quick.json", "affinity_halves_quick.md"]),
    ("decoder_speed", ["decoder_speed.py", "--quick"], ["decoder_speed_quick.json", "decoder_speed_quick.md"]),
    ("ensemble_levers", ["ensemble_levers.py", "--quick"], ["ensemble_levers_quick.json", "ensemble_levers_quick.md", "ensemble_levers_quick.png"]),
    ("early_stopping_ties", ["early_stopping_ties.py", "--quick"], ["early_stopping_ties_quick.json", "early_stopping_ties_quick.md"]),
    ("attention_kernels", ["attention_kernels.py", "--quick"], ["attention_kernels_quick.json", "attention_kernels_quick.md"]),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="scratch folder (default: a new temporary folder)")
    ap.add_argument("--jobs", type=int, default=2, help="scripts run at a time (default 2)")
    ap.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(n for n, _, _ in SMOKE))
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="elora_bench_quick_"))
    results, runs = out / "results", out / "runs"
    results.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ELORA_BENCH_RESULTS": str(results), "ELORA_BENCH_RUNS": str(runs), "HF_HUB_OFFLINE": "1"}
    chosen = set(args.only.split(",")) if args.only else None
    if chosen and (unknown := chosen - {n for n, _, _ in SMOKE}):
        ap.error(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))}")
    t_all = time.perf_counter()
    todo = [(name, cmd, expected) for name, cmd, expected in SMOKE if not chosen or name in chosen]

    def smoke(name: str, cmd: list[str], expected: list[str]) -> tuple[str, str, float, bool]:
        log = out / f"{name}.log"
        t0 = time.perf_counter()
        with log.open("w") as fh:
            rc = subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                 cwd=HERE.parent)
        seconds = time.perf_counter() - t0
        missing = [f for f in expected if not (results / f).is_file() or (results / f).stat().st_size == 0]
        ok = rc == 0 and not missing
        status = "ok" if ok else f"FAILED (exit {rc}{'; missing ' + ', '.join(missing) if missing else ''})"
        return name, status, seconds, ok

    done: dict[str, tuple[str, float]] = {}
    failed = []
    # Scripts are independent (own Ray instance, own output files): run --jobs of them at a time.
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        futures = [ex.submit(smoke, *item) for item in todo]
        for fut in as_completed(futures):
            name, status, seconds, ok = fut.result()
            done[name] = (status, seconds)
            print(f"bench-quick: {name:22s} {'ok' if ok else 'FAILED'} in {seconds:5.1f} s", flush=True)
            if not ok:
                failed.append(name)
                print("".join((out / f"{name}.log").read_text().splitlines(keepends=True)[-40:]), file=sys.stderr)
    rows = [(name, *done[name]) for name, _, _ in todo]
    if not failed:
        rc = subprocess.call([sys.executable, str(HERE / "summarize.py"), "--results", str(results), "--out",
                              str(out / "README.md"), "--include-quick"], env=env, cwd=HERE.parent)
        rows.append(("summarize", "ok" if rc == 0 else f"FAILED (exit {rc})", 0.0))
        if rc:
            failed.append("summarize")
    total = time.perf_counter() - t_all
    print(f"\nbench-quick: {len(rows) - len(failed)}/{len(rows)} ok in {total:.0f} s (smoke test; not timings) — {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
