"""How long `make demo` takes here (the figure the README quotes), measured the way a newcomer runs it.

Runs `make demo OUT=<fresh folder>` (the venv already installed, as after `make install`) a given
number of times, each in a new run folder, and records the wall time of each run, the stage times
from its report, and the headline numbers of the demo (groups, planted ARI, accuracies), so the
README's "~5 min" can be checked and re-measured by anyone.

    python benchmarks/demo_time.py              # one run
    python benchmarks/demo_time.py --runs 3
    python benchmarks/demo_time.py --baseline 919cb98     # paired with an older commit, alternating (same machine)
    python benchmarks/demo_time.py --precision native auto   # the current demo at each DEMO_PRECISION, alternating

Writes ``benchmarks/results/demo_time.{json,md}``. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RUNS, machine_info, write_results  # noqa: E402,I001


def demo_command(tree: Path, out: Path) -> str:
    """The ``elora run`` line(s) ``make demo OUT=<out>`` runs in ``tree`` after its install step (``make -n``):
    each commit's own demo settings."""
    text = subprocess.run(["make", "-n", "demo", f"OUT={out}"], cwd=tree, capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in text.splitlines() if "elora run" in ln]
    if not lines:
        sys.exit(f"no `elora run` line in `make -n demo` of {tree}")
    return " && ".join(lines)


def timed_demo(label: str, out: Path, tree: Path | None, repo: Path, precision: str | None = None) -> dict:
    """One demo into a fresh ``out``: ``make demo`` in this checkout (``precision``: its ``DEMO_PRECISION``), or
    (``tree``) the ``elora run`` of that checkout's ``make demo`` with its code first on the path and this
    checkout's venv. Returns its row."""
    shutil.rmtree(out, ignore_errors=True)
    if tree is None:
        cmd, cwd, env = ["make", "demo", f"OUT={out}", *([f"DEMO_PRECISION={precision}"] if precision else [])], repo, None
    else:
        if not (tree / ".venv").exists():
            (tree / ".venv").symlink_to(repo / ".venv")
        cmd, cwd, env = ["bash", "-c", demo_command(tree, out)], tree, {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"demo ({label}) failed:\n{(r.stdout + r.stderr)[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    methods = report["methods"]
    import yaml

    precision = (yaml.safe_load((out / "config.yaml").read_text()).get("compute") or {}).get("precision", "auto")
    row = {"code": f"{label}, precision {precision}", "wall_s": round(wall, 1), "stage_seconds": report["stage_seconds"], "groups": report["groups"],
           "planted_ari": report["clustering"].get("planted_ari"),
           "accuracy": {m: v["avg_accuracy"] for m, v in methods.items()}}
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--precision", nargs="+", default=None, metavar="P",
                    help="run the current demo with each DEMO_PRECISION given (e.g. native auto), alternating")
    ap.add_argument("--baseline", default=None, metavar="REV",
                    help="also time the demo at this git revision, alternating with the current code (each as the "
                         "`elora run` its own `make demo` runs, the install step left out), for a paired comparison")
    args = ap.parse_args(argv)
    repo = HERE.parent
    # `make demo` would reinstall first when pyproject.toml is newer than the install stamp: do that untimed.
    subprocess.run(["make", "install"], cwd=repo, check=True, capture_output=True)
    base_tree = None
    if args.baseline:
        base_tree = Path(tempfile.mkdtemp(prefix="demo_baseline_")) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(base_tree), args.baseline], cwd=repo, check=True,
                       capture_output=True)
    rows = []
    try:
        for i in range(args.runs):
            if base_tree is not None:
                rows.append({"run": i, **timed_demo(f"baseline {args.baseline}", RUNS / "demo_time" / f"baseline{i}", base_tree, repo)})
                rows.append({"run": i, **timed_demo("current", RUNS / "demo_time" / f"run{i}", repo, repo)})  # same way
            elif args.precision:
                for p in args.precision:
                    rows.append({"run": i, **timed_demo(f"current (make demo DEMO_PRECISION={p})",
                                                        RUNS / "demo_time" / f"run{i}_{p}", None, repo, p)})
            else:
                rows.append({"run": i, **timed_demo("current (make demo)", RUNS / "demo_time" / f"run{i}", None, repo)})
    finally:
        if base_tree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=repo, capture_output=True)
    lines = ["# `make demo` wall time", "",
             "`make demo` (the full method on the embedded suite plus the single-adapter and random-groups baselines), "
             "venv already installed, fresh run folder each time."
             + (f" Paired with the code at `{args.baseline}`, alternating; each runs the `elora run` line of its own "
                "`make demo` (after the install check)." if args.baseline else ""), "",
             "| run | code | wall s | slowest stages | groups (planted ARI) | ensemble acc | single adapter acc | random groups acc |",
             "|---:|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        slow = sorted(r["stage_seconds"].items(), key=lambda kv: -kv[1])[:3]
        acc = r["accuracy"]
        lines.append(f"| {r['run']} | {r['code']} | {r['wall_s']:.0f} | {', '.join(f'{k} {v:.0f} s' for k, v in slow)} | "
                     f"{len(r['groups'])} ({r['planted_ari']}) | {acc.get('ensemble', float('nan')):.3f} | "
                     f"{acc.get('single_adapter', float('nan')):.3f} | {acc.get('random_groups', float('nan')):.3f} |")
    m = machine_info()
    cmd = "demo_time.py " + " ".join(argv if argv is not None else sys.argv[1:])
    groups_of = ({"": [r for r in rows if not r["code"].startswith("baseline")]} if not args.precision else
                 {f" with DEMO_PRECISION={p}": [r for r in rows if f"DEMO_PRECISION={p})" in r["code"]]
                  for p in args.precision})
    for suffix, chosen in groups_of.items():
        walls = [r["wall_s"] for r in chosen]
        lines += ["", f"Current code{suffix}: mean {sum(walls) / len(walls):.0f} s over {len(walls)} run(s) "
                  f"(min {min(walls):.0f}, max {max(walls):.0f})."]
    current = [r["wall_s"] for r in rows if not r["code"].startswith("baseline")]
    data = {"rows": rows, "machine": m, "command": cmd}
    if args.baseline:
        base = [r["wall_s"] for r in rows if r["code"].startswith("baseline")]
        ratio = (sum(current) / len(current)) / (sum(base) / len(base))
        data.update(baseline=args.baseline, ratio_to_baseline=round(ratio, 3))
        lines += [f"Baseline `{args.baseline}`: mean {sum(base) / len(base):.0f} s; current / baseline = {ratio:.2f} "
                  f"(goal: within ±10%). Groups and accuracies: "
                  + ("identical." if all(r["accuracy"] == rows[0]["accuracy"] and r["groups"] == rows[0]["groups"] for r in rows)
                     else "they differ (see the rows).")]
    lines += ["", f"Machine: {m['cpu']} ({m['cores']} cores), {m['date']}. Command: `python benchmarks/{cmd}`."]
    write_results("demo_time", data, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
