"""Estimation fidelity (paper Table 3 / Table 5): linearised estimate vs real fine-tuning.

Runs ``elora fidelity`` on a config (default: the 8 shared GLUE/SuperGLUE tasks with MiniLM)
and copies its summary into ``benchmarks/results/estimation_fidelity_<name>.{json,md,png}``.

    python benchmarks/estimation_fidelity.py                       # the GLUE/SuperGLUE mix
    python benchmarks/estimation_fidelity.py --quick               # embedded suite, tiny-bert, 3 subsets
    python benchmarks/estimation_fidelity.py --set fidelity.num_subsets=30
    python benchmarks/estimation_fidelity.py --reuse --dims 200,800   # + the same subsets at other d

``--dims``: for each extra projection dimension the run directory's prepared data and real
fine-tuning results are copied to ``<run-dir>_d<d>`` (fine-tuning from θ* does not depend on d;
fidelity keys it by θ*), the features are recomputed at d, and the estimate is compared again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RUNS, machine_info, publish  # noqa: E402,I001
from elora_ray import load_config  # noqa: E402
from elora_ray.estimate.fidelity import run_fidelity  # noqa: E402
from elora_ray.featurize import featurize  # noqa: E402
from elora_ray import run_stages  # noqa: E402


def _num(x, scale: float, spec: str) -> str:
    """``x * scale`` formatted, or 'n/a' for an undefined statistic (None / NaN)."""
    return "n/a" if x is None or x != x else format(x * scale, spec)


def _dim_row(dim: int, summary: dict) -> dict:
    best = f"{summary['best_l2_by_relative_error']:g}"
    return {"dim": dim, "relative_error": summary["loss"]["relative_error"], "best_l2": summary["best_l2_by_relative_error"],
            "best_relative_error": summary["by_l2"][best]["relative_error"], "spearman": summary["loss"]["spearman"],
            "spearman_within_task": summary["loss"]["spearman_within_task"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=HERE / "configs" / "glue_fidelity_minilm.yaml")
    ap.add_argument("--name", default=None, help="result name (default: from the config file)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="embedded suite + tiny-bert + 3 subsets (smoke test)")
    ap.add_argument("--run-dir", type=Path, default=None, help="default: benchmarks/runs/<name>")
    ap.add_argument("--dims", default="", help="extra projection dimensions to compare, e.g. 200,800")
    ap.add_argument("--variant", dest="variants", action="append", default=[],
                    help="featurize override(s) to compare on the same fine-tuned subsets, e.g. "
                    "'featurize.gradient=full_rank' (several: separate with ';'); repeatable")
    ap.add_argument("--reuse", action="store_true",
                    help="keep the run directory's prepared data and fine-tuned subsets as they are, even if the "
                    "code's data preparation changed since; features are recomputed on that data only if the "
                    "featurize settings or code changed, then the summary")
    args = ap.parse_args(argv)
    quick = ["model.name_or_path=tiny-bert", "suite.samples_per_task=60", "suite.tasks_per_group=[2,2,2]",
             "featurize.dim=64", "fidelity.num_subsets=3"]

    def load_cfg(extra: list[str]):
        if args.quick:
            return load_config(None, [*quick, *args.overrides, *extra])
        return load_config(args.config, [*args.overrides, *extra])

    cfg = load_cfg([])
    name = args.name or ("quick" if args.quick else args.config.stem)
    run_dir = args.run_dir or RUNS / f"fidelity_{name}"
    def featurize_sibling(cfg_s, main: Path, sibling: Path) -> None:
        """Features of another setting on the main run's own prepared data and fine-tunes: the sibling run
        directory gets copies of both (its data replaced when it differs, e.g. prepared by older code), so
        the fine-tunes' θ* matches and none is run again."""
        sibling.mkdir(parents=True, exist_ok=True)
        manifest = lambda r: json.loads((r / "data" / "manifest.json").read_text()).get("fingerprint")  # noqa: E731
        if (sibling / "data").exists() and (not (sibling / "data" / "manifest.json").is_file()
                                            or manifest(sibling) != manifest(main)):
            shutil.rmtree(sibling / "data")
        for sub in ("data", "fidelity/real"):
            if not (sibling / sub).exists():
                shutil.copytree(main / sub, sibling / sub)
        if args.reuse:
            featurize(cfg_s, sibling)
        else:
            run_stages(cfg_s, sibling, until="featurize")

    t0 = time.perf_counter()
    if args.reuse and (run_dir / "data" / "manifest.json").is_file():
        featurize(cfg, run_dir)  # current features on the run's own prepared data (a no-op when they are current)
    else:
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
    by_dim = [_dim_row(cfg.featurize.dim, summary)]
    for d in [int(x) for x in args.dims.split(",") if x.strip()]:
        if d == cfg.featurize.dim:
            continue
        run_d = run_dir.with_name(f"{run_dir.name}_d{d}")
        cfg_d = cfg.model_copy(update={"featurize": cfg.featurize.model_copy(update={"dim": d})})
        featurize_sibling(cfg_d, run_dir, run_d)
        by_dim.append(_dim_row(d, run_fidelity(cfg_d, run_d)))
    by_dim.sort(key=lambda r: r["dim"])
    variants = []
    for i, spec in enumerate(args.variants):
        overrides = [x.strip() for x in spec.split(";") if x.strip()]
        bad = [o for o in overrides if not o.startswith("featurize.")]
        if bad:
            ap.error(f"--variant changes the features only (featurize.*), not {bad[0]!r}: fine-tuning is shared")
        run_v = run_dir.with_name(f"{run_dir.name}_v{i + 1}")
        cfg_v = load_cfg(overrides)
        featurize_sibling(cfg_v, run_dir, run_v)
        sv = run_fidelity(cfg_v, run_v)
        variants.append({"variant": "; ".join(overrides), **_dim_row(cfg_v.featurize.dim, sv),
                         "accuracy_relative_error": sv["accuracy_relative_error"],
                         "summary": sv})
    data["variants"] = variants
    data["by_dim"] = by_dim
    md = (run_dir / "fidelity" / "summary.md").read_text()
    if len(by_dim) > 1:
        md += ("\n## The same subsets at several projection dimensions d\n\n"
               "| d | loss relative error (λ as configured) | best λ in sweep: relative error | Spearman overall | Spearman within task |\n"
               "|---:|---:|---:|---:|---:|\n")
        for r in by_dim:
            md += (f"| {r['dim']} | {_num(r['relative_error'], 100, '.1f')}% | λ={r['best_l2']:g}: "
                   f"{_num(r['best_relative_error'], 100, '.1f')}% | {_num(r['spearman'], 1, '.2f')} | "
                   f"{_num(r['spearman_within_task'], 1, '.2f')} |\n")
    if variants:
        md += ("\n## The same fine-tuned subsets with other features\n\n"
               "| features | loss relative error (λ as configured) | best λ in sweep: relative error | accuracy relative error | "
               "Spearman overall | Spearman within task |\n|---|---:|---:|---:|---:|---:|\n")
        md += (f"| as configured | {_num(summary['loss']['relative_error'], 100, '.2f')}% | "
               f"λ={by_dim[0]['best_l2']:g}: {_num(by_dim[0]['best_relative_error'], 100, '.2f')}% | "
               f"{_num(summary['accuracy_relative_error'], 100, '.2f')}% | "
               f"{_num(summary['loss']['spearman'], 1, '.3f')} | {_num(summary['loss']['spearman_within_task'], 1, '.2f')} |\n")
        for r in variants:
            md += (f"| `{r['variant']}` | {_num(r['relative_error'], 100, '.2f')}% | λ={r['best_l2']:g}: "
                   f"{_num(r['best_relative_error'], 100, '.2f')}% | {_num(r['accuracy_relative_error'], 100, '.2f')}% | "
                   f"{_num(r['spearman'], 1, '.3f')} | "
                   f"{_num(r['spearman_within_task'], 1, '.2f')} |\n")
    publish(f"estimation_fidelity_{name}", data, md, run_dir / "plots" / "fidelity.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
