"""The ``elora`` command line: one subcommand per stage, plus ``run`` for the whole pipeline."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import ConfigError, dump_config, load_config
from .errors import EloraError

log = logging.getLogger("elora")

EPILOG = """examples:
  elora run --out runs/demo                       # embedded suite + all-MiniLM-L6-v2
  elora run --config my.yaml --out runs/x --set adapter.type=qlora --set adapter.rank=8
  elora validate --config my.yaml                 # check config and data, write nothing
  elora suite --out suite/                        # export the embedded suite as jsonl + config
"""


def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    p.add_argument("--config", "-c", type=Path, default=None, help="YAML config (default: the embedded default)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set adapter.rank=8 (repeatable; value parsed as YAML)",
    )
    if out:
        p.add_argument("--out", "-o", type=Path, required=True, help="run directory (created; reused to resume)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elora",
        description="Fine-tune one language model on many datasets at once (EnsembleLoRA on Ray).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run every available stage into --out (resumable)",
                       description="Run the pipeline: prepare data, check model + adapter, and the later stages.")
    _common(p)
    p.add_argument("--force", action="store_true", help="redo stages even if their artifacts exist")

    p = sub.add_parser("prepare", help="load, validate and split the tasks; write data/<task>/<split>.parquet",
                       description="Load every task, check it (labels, fields, encodings), carve missing splits "
                       "with a fixed seed, and write the data keyed by sample id under --out/data.")
    _common(p)
    p.add_argument("--force", action="store_true", help="rewrite even if the prepared data is current")

    p = sub.add_parser("check-model", help="build model + adapter, count truncations, run one batch",
                       description="Build the model and adapter from the config, count samples truncated to "
                       "model.max_length, run a forward/backward pass and write --out/model.json.")
    _common(p)

    p = sub.add_parser("featurize", help="projected per-sample gradients at θ* (Ray Data); resumable",
                       description="Stream every train/validation sample through a Ray Data actor pool that "
                       "computes the JL-projected per-sample gradient of the gold-class log-odds w.r.t. the "
                       "adapter at initialisation (encoders: after a linear probe of the task heads). Writes "
                       "--out/features/<split>/<task>/part-*.parquet; a rerun skips finished shards.")
    _common(p)
    p.add_argument("--force", action="store_true", help="recompute even if the features are current")

    p = sub.add_parser("estimate", help="k subset regressions (Ray tasks) → affinity.csv",
                       description="Sample k task subsets, fit the linearised fine-tuning surrogate on each "
                       "(one Ray task per batch of subsets), evaluate every member task on validation, and "
                       "write estimate/results.parquet and the affinity matrix (affinity.csv). Runs "
                       "prepare/featurize first if their artifacts are missing.")
    _common(p)
    p.add_argument("--force", action="store_true", help="re-solve even if the results are current")

    p = sub.add_parser("cluster", help="SDP clustering of affinity.csv → groups.json + plots/affinity.png",
                       description="Partition the tasks into m groups by the SDP relaxation of average "
                       "intra-cluster density (m automatic or cluster.num_groups). Runs the earlier stages "
                       "first if their artifacts are missing.")
    _common(p)
    p.add_argument("--force", action="store_true", help="recluster even if groups.json is current")

    for name, help_, desc in (
        ("train", "one adapter per group with Ray Train → adapters/group-*",
         "Train one adapter per group of groups.json with Ray Train (TorchTrainer; local mode on CPU, DDP with "
         "train.num_workers ≥ 1), early-stopped on the group's validation loss; groups train concurrently. "
         "Writes adapters/<id>/, outputs/<id>.parquet and ensemble/members.json. Runs earlier stages if needed."),
        ("boost", "b gradient-boosting adapters on the worst groups",
         "Add boost.steps boosting adapters, each fit to the residual 1 − p of the group with the highest "
         "training loss (boost.method: linearized ridge on projected gradients, or trained)."),
        ("combine", "learn the per-task combination weights on validation → ensemble/weights.json",
         "Fit per-task convex weights over the group ensembles minimising the validation log loss (cvxpy)."),
        ("baselines", "train the baselines (single adapter, QLoRA, per-task, MTL-FT, random/gradient groups)",
         "Train every method in baselines.methods under the ensemble's protocol."),
        ("evaluate", "accuracy and cost of every method → evaluation.json",
         "Per-task accuracy of the ensemble and the baselines on evaluate.split, with FLOPs, memory and time."),
    ):
        p = sub.add_parser(name, help=help_, description=desc)
        _common(p)
        p.add_argument("--force", action="store_true", help="redo this stage even if its artifacts are current")

    p = sub.add_parser("tune", help="Ray Tune: choose m and b from the estimated objective (seconds)",
                       description="Search the number of groups m (tune.min_groups..max_groups) and boosting steps "
                       "b (0..tune.max_boost_steps, ASHA's time attribute) with Ray Tune, scoring each by Algorithm 2 "
                       "run in the linearised model (no fine-tuning). Writes tune/trials.csv, tune/best.json and "
                       "plots/tune_objective.png. Runs featurize/estimate first if needed.")
    _common(p)

    p = sub.add_parser("federated", help="FedAvg over many clients (Shakespeare roles): baselines + federated ensemble",
                       description="Derive clients from federated.source (roles of a play, split into chunks), then run "
                       "federated.methods: FedAvg (one adapter), MTL-FT (FedAvg + per-client fine-tuning) and the "
                       "federated EnsembleLoRA (client affinity → groups → one FedAvg adapter per group → boosting → "
                       "learned weights). Needs a decoder, e.g. --config configs/federated_shakespeare_smollm2.yaml. "
                       "Writes <out>/federated/report.{json,md} and plots; resumable.")
    _common(p)
    p.add_argument("--force", action="store_true", help="start the federated run over")

    p = sub.add_parser("predict", help="predict with a finished run's ensemble",
                       description="Load the ensemble of a finished run (adapters + weights) and predict labels "
                       "for new text: --text (repeatable) or --input FILE.jsonl with 'text' (and optional "
                       "'text_pair') fields; prints one JSON object per input.")
    p.add_argument("--run", type=Path, required=True, help="run directory written by `elora run`")
    p.add_argument("--task", required=True, help="task name (one of the run's tasks)")
    p.add_argument("--text", action="append", default=[], help="input text (repeatable)")
    p.add_argument("--input", type=Path, default=None, help="jsonl file with a 'text' field per line")
    p.add_argument("--batch-size", type=int, default=32)

    p = sub.add_parser("calibrate", help="fit the surrogate's regularisation constant from a few real fine-tunes",
                       description="Really fine-tune --subsets random task subsets with the train settings and keep "
                       "the constant c of estimate.l2: auto (λ = c·batch/(2·lr·epochs·N)) that predicts their validation "
                       "loss best. Writes --out/calibration.json (and the user cache, reused by later runs of the same "
                       "model + adapter). Runs featurize first if needed.")
    _common(p)
    p.add_argument("--subsets", type=int, default=6, help="subsets to fine-tune (default 6)")

    p = sub.add_parser("fidelity", help="estimated vs really fine-tuned subset performance (+ cost ratio)",
                       description="Really fine-tune the adapter on fidelity.num_subsets random task subsets "
                       "(one Ray task each) and compare with the linearised estimate: first-order error of h, "
                       "relative error and Spearman of the validation loss, and the FLOPs / wall-time ratio. "
                       "Writes --out/fidelity/ and plots/fidelity.png. Runs featurize first if needed.")
    _common(p)

    p = sub.add_parser("analyze", help="analyses of adapters: `elora analyze sharpness`",
                       description="Analyses of fine-tuned adapters (paper Section 4).")
    analyze = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    p = analyze.add_parser("sharpness", help="Hessian-trace sharpness and train-test gap vs adapter rank and ensembles",
                           description="For each task of analyze.sharpness.tasks: train single adapters of each rank "
                           "in analyze.sharpness.ranks and ensembles of k adapters (analyze.sharpness.ensemble_sizes) "
                           "whose ranks sum to analyze.sharpness.total_rank, then measure the generalization gap "
                           "(test - train loss) and the Hessian trace of the per-sample loss w.r.t. the adapter "
                           "weights (Hutchinson; max and mean over training points). One Ray task per variant; "
                           "resumable. Writes --out/analyze/sharpness/ and plots/sharpness.png.")
    _common(p)

    p = sub.add_parser("validate", help="validate the config and data without writing anything",
                       description="Validate the configuration and load every task; print a summary.")
    _common(p, out=False)

    p = sub.add_parser("config", help="print the fully resolved config (defaults filled in)",
                       description="Print the configuration after defaults and --set overrides.")
    _common(p, out=False)

    p = sub.add_parser("suite", help="export the embedded task suite as jsonl files + a config",
                       description="Write the embedded synthetic suite as jsonl files and a config.yaml "
                       "that reads them, plus groups.json with the planted partition.")
    p.add_argument("--out", "-o", type=Path, required=True)
    _common_suite = p.add_argument_group("suite")
    _common_suite.add_argument("--samples-per-task", type=int, default=None)
    _common_suite.add_argument("--seed", type=int, default=None)

    sub.add_parser("formats", help="list the built-in dataset readers (format: ...)",
                   description="List generic formats and built-in GLUE/SuperGLUE readers.")
    return parser


def _cmd_run(args) -> None:
    from .pipeline import run_pipeline

    cfg = load_config(args.config, args.overrides)
    run_pipeline(cfg, args.out, force=args.force)


def _cmd_prepare(args) -> None:
    from .pipeline import init_run_dir, write_run_config
    from .prepare import prepare

    cfg = load_config(args.config, args.overrides)
    init_run_dir(cfg, args.out)
    prepare(cfg, args.out, force=args.force)
    write_run_config(cfg, args.out)


def _cmd_check_model(args) -> None:
    from .models.check import check_model
    from .pipeline import init_run_dir, write_run_config
    from .prepare import prepare, read_prepared

    cfg = load_config(args.config, args.overrides)
    init_run_dir(cfg, args.out)
    prepare(cfg, args.out)
    write_run_config(cfg, args.out)
    check_model(cfg, read_prepared(args.out), args.out)


def _cmd_stage(args) -> None:
    from .pipeline import run_stages

    cfg = load_config(args.config, args.overrides)
    run_stages(cfg, args.out, until=args.command, force_last=args.force)


def _cmd_analyze(args) -> None:
    from .analyze.generalization import OUT_DIR, run_sharpness
    from .pipeline import run_stages

    cfg = load_config(args.config, args.overrides)
    run_stages(cfg, args.out, until="prepare")
    run_sharpness(cfg, args.out)
    print((args.out / OUT_DIR / "summary.md").read_text(), end="")


def _cmd_fidelity(args) -> None:
    from .estimate.fidelity import run_fidelity
    from .pipeline import run_stages

    cfg = load_config(args.config, args.overrides)
    run_stages(cfg, args.out, until="featurize")
    summary = run_fidelity(cfg, args.out)
    print((args.out / "fidelity" / "summary.md").read_text(), end="")
    del summary


def _cmd_calibrate(args) -> None:
    from .errors import ConfigError
    from .estimate.calibration import calibrate, render_calibration
    from .pipeline import run_stages

    if args.subsets < 2:
        raise ConfigError(f"--subsets must be at least 2; got {args.subsets}")
    cfg = load_config(args.config, args.overrides)
    run_stages(cfg, args.out, until="featurize")
    print(render_calibration(calibrate(cfg, args.out, num_subsets=args.subsets)), end="")


def _cmd_tune(args) -> None:
    from .pipeline import run_stages
    from .tune.stage import tune_stage

    cfg = load_config(args.config, args.overrides)
    run_stages(cfg, args.out, until="estimate")
    best = tune_stage(cfg, args.out)
    print(f"best: m={best['m']}, b={best['b']} ({cfg.tune.objective} objective: validation loss {best['val_loss']:.4f}); "
          f"train it with: elora run --out {args.out} --set {' --set '.join(best['overrides'])}")


def _cmd_federated(args) -> None:
    from .federated.stage import federated_stage
    from .runlog import setup_logging

    cfg = load_config(args.config, args.overrides)
    setup_logging(args.out, args.verbose)
    federated_stage(cfg, args.out, force=args.force)
    print((args.out / "federated" / "report.md").read_text(), end="")


def _cmd_predict(args) -> None:
    import json

    from .ensemble.predictor import EnsemblePredictor
    from .runlog import setup_logging

    setup_logging(None)
    texts, pairs = list(args.text), [None] * len(args.text)
    if args.input is not None:
        for lineno, line in enumerate(args.input.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{args.input}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ConfigError(f"{args.input}:{lineno}: field 'text' (a string) is missing")
            texts.append(row["text"])
            pairs.append(row.get("text_pair"))
    if not texts:
        raise ConfigError("nothing to predict: give --text or --input")
    predictor = EnsemblePredictor(args.run, batch_size=args.batch_size)
    if args.task not in predictor.tasks:
        raise ConfigError(f"unknown task {args.task!r}; the run has {sorted(predictor.tasks)}")
    probs = predictor.predict_proba(args.task, texts, pairs if any(p is not None for p in pairs) else None)
    labels = predictor.tasks[args.task].labels
    for text, p in zip(texts, probs):
        print(json.dumps({"text": text, "label": labels[int(p.argmax())], "probabilities": dict(zip(labels, map(float, p.round(6))))}))


def _cmd_validate(args) -> None:
    from .runlog import setup_logging
    from .tasks.load import load_tasks

    setup_logging(None, args.verbose)
    cfg = load_config(args.config, args.overrides)
    tasks = load_tasks(cfg)
    print(f"config OK: {len(tasks)} tasks, model {cfg.model.name_or_path}, adapter {cfg.adapter.type}")
    for t in tasks:
        print(f"  {t.name:24s} {t.sizes()} labels={t.labels}")
        for note in t.notes:
            print(f"    note: {note}")


def _cmd_config(args) -> None:
    print(dump_config(load_config(args.config, args.overrides)), end="")


def _cmd_suite(args) -> None:
    from .tasks.export import export_suite
    from .config import SuiteConfig

    kw = {}
    if args.samples_per_task is not None:
        kw["samples_per_task"] = args.samples_per_task
    if args.seed is not None:
        kw["seed"] = args.seed
    path = export_suite(SuiteConfig(**kw), args.out)
    print(f"wrote the embedded suite to {args.out}; run it with: elora run --config {path} --out runs/suite")


def _cmd_formats(args) -> None:
    from .config import GENERIC_FORMATS
    from .tasks.builtin import BUILTIN_FORMATS

    print("generic formats: " + ", ".join(GENERIC_FORMATS))
    print("built-in readers (format: NAME, path: folder or {data_root}/<benchmark>/<Task>):")
    for name in sorted(BUILTIN_FORMATS):
        print(f"  {name}")


COMMANDS = {
    "run": _cmd_run,
    "prepare": _cmd_prepare,
    "check-model": _cmd_check_model,
    "featurize": _cmd_stage,
    "estimate": _cmd_stage,
    "cluster": _cmd_stage,
    "train": _cmd_stage,
    "boost": _cmd_stage,
    "combine": _cmd_stage,
    "baselines": _cmd_stage,
    "evaluate": _cmd_stage,
    "predict": _cmd_predict,
    "tune": _cmd_tune,
    "federated": _cmd_federated,
    "fidelity": _cmd_fidelity,
    "calibrate": _cmd_calibrate,
    "analyze": _cmd_analyze,
    "validate": _cmd_validate,
    "config": _cmd_config,
    "suite": _cmd_suite,
    "formats": _cmd_formats,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        COMMANDS[args.command](args)
    except (EloraError, ConfigError, FileNotFoundError) as exc:
        from .runlog import log_error_to_file, redact

        message = redact(str(exc))
        print(f"error: {message}", file=sys.stderr)
        log_error_to_file(f"{args.command} failed: {message}")
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
