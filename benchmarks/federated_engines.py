"""FedAvg wall time: the client actor pool vs Ray Train (``federated.engine``), same clients and rounds.

Runs only the ``fedavg`` method of ``elora federated`` (one adapter over every client) with each
engine on the same config and seed, in fresh run folders, and records the wall time of FedAvg's
training and the resulting test loss (which must agree: both engines compute the same adapter).

    python benchmarks/federated_engines.py                     # tiny random Llama, 658 Shakespeare clients
    python benchmarks/federated_engines.py --config benchmarks/configs/federated_shakespeare_smollm2.yaml

Writes ``benchmarks/results/federated_engines[_<name>].{json,md}``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RUNS, machine_info, write_results  # noqa: E402,I001
from elora_ray import load_config  # noqa: E402
from elora_ray.federated.stage import federated_stage  # noqa: E402

DEFAULT_CONFIG = HERE.parent / "configs" / "federated_shakespeare_tiny.yaml"
ENGINES = {"actors": ["federated.engine=actors"],
           "ray_train (local mode)": ["federated.engine=ray_train", "federated.train_workers=0"],
           "ray_train (1 worker)": ["federated.engine=ray_train", "federated.train_workers=1"],
           "ray_train (2 workers)": ["federated.engine=ray_train", "federated.train_workers=2"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--name", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="48 clients, 1 round (smoke test, not a result)")
    args = ap.parse_args(argv)
    overrides = ["federated.methods=[fedavg]", *args.overrides]
    if args.quick:
        overrides += ["federated.min_clients=48", "federated.max_clients=48", "federated.rounds=1"]
    name = args.name or ("quick" if args.quick else None)
    rows = []
    for engine, extra in ENGINES.items():
        cfg = load_config(args.config, [*overrides, *extra])
        out = RUNS / f"federated_engines_{name or args.config.stem}" / engine.split()[0].replace("(", "") / str(cfg.federated.train_workers)
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        report = federated_stage(cfg, out)
        fed = report["methods"]["fedavg"]
        rows.append({"engine": engine, "fedavg_wall_s": fed["wall_s"], "stage_wall_s": time.perf_counter() - t0,
                     "test_loss": fed["test_loss"], "client_updates": fed["client_updates"],
                     "clients": report["clients"], "rounds": report["rounds"]})
        print(rows[-1], flush=True)
    base = rows[0]
    lines = [f"# FedAvg engines: {args.config.name}", "",
             f"{base['clients']} clients, {base['rounds']} rounds, {base['client_updates']} client updates in all; "
             "FedAvg wall time: its training rounds (for ray_train including the hand-over of the pool's CPUs and back).", "",
             "| engine | FedAvg wall s | vs actors | test loss | whole run s |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['fedavg_wall_s']:.1f} | {r['fedavg_wall_s'] / base['fedavg_wall_s']:.2f}× | "
                     f"{r['test_loss']:.4f} | {r['stage_wall_s']:.0f} |")
    m = machine_info()
    cmd = "federated_engines.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines += ["", "The test losses agree because the engines compute the same adapter (same sampled clients, seeds "
              "and window-weighted average).", "",
              f"Machine: {m['cpu']} ({m['cores']} cores), {m['date']}. Command: `python benchmarks/{cmd}`."]
    suffix = f"_{name}" if name else ""
    write_results(f"federated_engines{suffix}", {"rows": rows, "config": str(args.config), "overrides": overrides,
                                                 "machine": m, "command": cmd}, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
