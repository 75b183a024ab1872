"""How long `make demo` takes here (the figure the README quotes), measured the way a newcomer runs it.

Runs `make demo OUT=<fresh folder>` (the venv already installed, as after `make install`) a given
number of times, each in a new run folder, and records the wall time of each run, the stage times
from its report, and the headline numbers of the demo (groups, planted ARI, accuracies), so the
README's "~5 min" can be checked and re-measured by anyone.

    python benchmarks/demo_time.py              # one run
    python benchmarks/demo_time.py --runs 3

Writes ``benchmarks/results/demo_time.{json,md}``. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RUNS, machine_info, write_results  # noqa: E402,I001


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args(argv)
    repo = HERE.parent
    if not (repo / ".venv" / ".installed").is_file():
        sys.exit("run `make install` first: this measures the demo itself, not the installation")
    rows = []
    for i in range(args.runs):
        out = RUNS / "demo_time" / f"run{i}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        r = subprocess.run(["make", "demo", f"OUT={out}"], cwd=repo, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"make demo failed:\n{(r.stdout + r.stderr)[-3000:]}")
        report = json.loads((out / "report.json").read_text())
        methods = report["methods"]
        rows.append({"run": i, "wall_s": round(wall, 1), "stage_seconds": report["stage_seconds"],
                     "groups": report["groups"], "planted_ari": report["clustering"].get("planted_ari"),
                     "accuracy": {m: v["avg_accuracy"] for m, v in methods.items()}})
        print(rows[-1], flush=True)
    walls = [r["wall_s"] for r in rows]
    lines = ["# `make demo` wall time", "",
             "`make demo` (the full method on the embedded suite plus the single-adapter and random-groups baselines), "
             "venv already installed, fresh run folder each time.", "",
             "| run | wall s | slowest stages | groups (planted ARI) | ensemble acc | single adapter acc | random groups acc |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        slow = sorted(r["stage_seconds"].items(), key=lambda kv: -kv[1])[:3]
        acc = r["accuracy"]
        lines.append(f"| {r['run']} | {r['wall_s']:.0f} | {', '.join(f'{k} {v:.0f} s' for k, v in slow)} | "
                     f"{len(r['groups'])} ({r['planted_ari']}) | {acc.get('ensemble', float('nan')):.3f} | "
                     f"{acc.get('single_adapter', float('nan')):.3f} | {acc.get('random_groups', float('nan')):.3f} |")
    m = machine_info()
    cmd = "demo_time.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines += ["", f"Mean {sum(walls) / len(walls):.0f} s over {len(walls)} run(s) (min {min(walls):.0f}, max {max(walls):.0f}).",
              "", f"Machine: {m['cpu']} ({m['cores']} cores), {m['date']}. Command: `python benchmarks/{cmd}`."]
    write_results("demo_time", {"rows": rows, "machine": m, "command": cmd}, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
