"""Estimation fidelity (paper Table 3 / Table 5): linearised estimate vs real fine-tuning.

Runs ``elora fidelity`` on a config (default: the 8 shared GLUE/SuperGLUE tasks with MiniLM)
and copies its summary into ``benchmarks/results/estimation_fidelity_<name>.{json,md,png}``.

    python benchmarks/estimation_fidelity.py                       # the GLUE/SuperGLUE mix
    python benchmarks/estimation_fidelity.py --quick               # embedded suite, tiny-bert, 3 subsets
    python benchmarks/estimation_fidelity.py --set fidelity.num_subsets=30
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, RUNS, machine_info, write_results  # noqa: E402,I001
from elora_ray.config import load_config  # noqa: E402
from elora_ray.estimate.fidelity import run_fidelity  # noqa: E402
from elora_ray.pipeline import run_stages  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=HERE / "configs" / "glue_fidelity_minilm.yaml")
    ap.add_argument("--name", default=None, help="result name (default: from the config file)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="embedded suite + tiny-bert + 3 subsets (smoke test)")
    ap.add_argument("--run-dir", type=Path, default=None, help="default: benchmarks/runs/<name>")
    ap.add_argument("--reuse", action="store_true",
                    help="use the run directory's existing features and fine-tuned subsets as they are "
                    "(recompute only the summary), even if the code's data preparation changed since")
    args = ap.parse_args(argv)
    if args.quick:
        cfg = load_config(None, ["model.name_or_path=tiny-bert", "suite.samples_per_task=60", "featurize.dim=64",
                                 "fidelity.num_subsets=3", *args.overrides])
        name = args.name or "quick"
    else:
        cfg = load_config(args.config, args.overrides)
        name = args.name or args.config.stem
    run_dir = args.run_dir or RUNS / f"fidelity_{name}"
    t0 = time.perf_counter()
    if not (args.reuse and (run_dir / "features" / "manifest.json").is_file()):
        run_stages(cfg, run_dir, until="featurize")
    summary = run_fidelity(cfg, run_dir)
    data = {
        "benchmark": "estimation_fidelity",
        "name": name,
        "config": str(args.config) if not args.quick else "quick",
        "overrides": args.overrides,
        "reused_run_dir": bool(args.reuse),
        "machine": machine_info(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "wall_s": round(time.perf_counter() - t0, 1),
        "paper": {"relative_error_d400": "< 5% (Table 3: within 9%, under 5% for d ≥ 400)", "correlation": "up to 0.6",
                  "speedup_flops": "105x"},
        "summary": summary,
    }
    md = (run_dir / "fidelity" / "summary.md").read_text()
    md += f"\nMachine: {data['machine']['cpu']} ({data['machine']['cores']} cores), {data['machine']['date']}. " \
          f"Command: `python benchmarks/{data['command']}`.\n"
    write_results(f"estimation_fidelity_{name}", data, md)
    shutil.copyfile(run_dir / "plots" / "fidelity.png", RESULTS / f"estimation_fidelity_{name}.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
