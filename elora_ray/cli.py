"""The ``elora`` command line: one subcommand per stage, plus ``run`` for the whole pipeline."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .cli_config import command_config as _config
from .config import ConfigError, dump_config
from .errors import EloraError

log = logging.getLogger("elora")

EPILOG = """examples:
  elora run --out runs/demo                       # embedded suite + all-MiniLM-L6-v2
  elora run --config my.yaml --out runs/x --set adapter.type=qlora --set adapter.rank=8
  elora validate --config my.yaml                 # check config and data, write nothing
  elora suite --out suite/                        # export the embedded suite as jsonl + config
  elora add-task --run runs/x --config my.yaml    # my.yaml: the run's tasks plus new ones; retrains one group
"""


def _common(p: argparse.ArgumentParser, out: bool = True) -> None:
    p.add_argument("--config", "-c", type=Path, default=None,
                   help="YAML config (default: the run's own config.yaml when --out names an existing run, "
                        "else the embedded default)" if out else "YAML config (default: the embedded default)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set adapter.rank=8 (repeatable; value parsed as YAML)",
    )
    if out:
        p.add_argument("--out", "-o", type=_run_location, required=True,
                       help="run directory (created; reused to resume): a path, or s3://bucket/prefix, gs://…")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _run_location(text: str) -> str | Path:
    """A bucket URI stays a string (``Path`` would fold ``s3://b`` into a local ``s3:/b``)."""
    from .storage import is_remote

    return text if is_remote(text) else Path(text)


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

    from .stages import STAGES

    for stage in STAGES:  # one subcommand per stage, in pipeline order, then the side stages
        p = sub.add_parser(stage.cli, help=stage.help, description=stage.description)
        if stage.arguments is not None:
            p = stage.arguments(p) or p
        _common(p)
        if stage.forceable:
            p.add_argument("--force", action="store_true", help="redo this stage even if its artifacts are current")

    p = sub.add_parser("predict", help="predict with a finished run's ensemble",
                       description="Load the ensemble of a finished run (adapters + weights) and predict labels "
                       "for new text: --text (repeatable; --text-pair for sentence-pair tasks) or --input FILE.jsonl "
                       "with 'text' (and optional 'text_pair') fields; prints one JSON object per input with the label "
                       "and every label's probability.")
    p.add_argument("--run", type=Path, required=True, help="run directory written by `elora run`")
    p.add_argument("--task", required=True, help="task name (one of the run's tasks)")
    p.add_argument("--text", action="append", default=[], help="input text (repeatable)")
    p.add_argument("--text-pair", action="append", default=[], dest="text_pair",
                   help="second text of a sentence-pair task, one per --text, in the same order")
    p.add_argument("--input", type=Path, default=None, help="jsonl file with a 'text' field per line")
    p.add_argument("--batch-size", type=int, default=32)

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

    p = sub.add_parser("plan", help="print each stage's processes, devices and peak memory; refuse what cannot fit",
                       description="Build the model on the meta device from its config.json (no weights are read) and "
                       "print, per stage, where it runs, how many processes, dtype, batch size and estimated peak GPU "
                       "and host memory; exit 2 with the settings to change when a stage cannot fit. The machine is "
                       "this one unless given: --gpus 1 --gpu-memory 80GB --memory 128GiB --head-memory 16GiB.")
    _common(p, out=False)
    p.add_argument("--nodes", type=int, default=None, help="worker nodes of the shape below (default 1)")
    p.add_argument("--cpus", type=int, default=None, help="CPUs per node (default: this machine's)")
    p.add_argument("--memory", default=None, help="host memory per node, e.g. 128GiB (default: this machine's)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs per node (default: this machine's)")
    p.add_argument("--gpu-memory", dest="gpu_memory", default=None, help="memory of each GPU, e.g. 80GB")
    p.add_argument("--head-memory", dest="head_memory", default=None, help="memory of the head node (the driver)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")

    p = sub.add_parser("serve", help="serve a finished run's ensemble over HTTP (Ray Serve; needs the serve extra)",
                       description="Deploy a finished run's ensemble as a Ray Serve application: POST /predict "
                       "({\"task\": ..., \"text\" or \"texts\": ...} -> labels and probabilities), GET /health, /metadata, "
                       "/tasks. Texts of concurrent requests are batched; serves until Ctrl-C. On this machine's Ray, "
                       "or on the cluster of $RAY_ADDRESS (ray job submit). See docs/operations.md.")
    p.add_argument("--run", type=Path, default=None, help="run directory written by `elora run` (or `run:` in --options)")
    p.add_argument("--options", type=Path, default=None, help="YAML file of serve options (the flags' names with _); flags win")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (0.0.0.0 to listen on every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", default="elora", help="Serve application name")
    p.add_argument("--route-prefix", dest="route_prefix", default="/")
    p.add_argument("--detach", action="store_true", help="leave the application on the cluster and return")
    for flag, typ, what in (("replicas", int, "model replicas (default 1)"), ("num-cpus", float, "CPUs per replica (default 1)"),
                            ("num-gpus", float, "GPUs per replica (default 0)"),
                            ("device", str, "auto (default: cuda when the replica has a GPU), cpu, cuda, cuda:N"),
                            ("max-batch-size", int, "texts per forward pass across requests (default 32)"),
                            ("batch-wait-timeout-s", float, "how long a batch waits to fill (default 0.005)"),
                            ("max-ongoing-requests", int, "requests one replica holds at once (default 64)"),
                            ("max-items", int, "texts per request (default 256)"),
                            ("max-text-chars", int, "characters per text (default 20000)")):
        p.add_argument(f"--{flag}", dest=flag.replace("-", "_"), type=typ, default=None, help=what)
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")

    p = sub.add_parser("export", help="write a finished run's ensemble as PEFT adapters + weights + a loader",
                       description="Write each adapter of a finished run's ensemble as a PEFT adapter on the plain "
                       "Hugging Face base model (encoders: plus each task's head as safetensors), the groups and "
                       "combination weights as ensemble.json, a loader (load_ensemble.py: torch, transformers, peft, "
                       "safetensors only) and a README. The base model is not copied.")
    p.add_argument("--run", type=Path, required=True, help="run directory written by `elora run`")
    p.add_argument("--to", type=Path, required=True, help="export directory (written atomically)")
    p.add_argument("--force", action="store_true", help="replace --to if it exists")

    __import__("elora_ray.grow.commands", fromlist=["add_parsers"]).add_parsers(sub, _common)
    sub.add_parser("formats", help="list the built-in dataset readers (format: ...)",
                   description="List generic formats and built-in GLUE/SuperGLUE readers.")
    return parser


def _cmd_run(args) -> None:
    from .pipeline import run_pipeline
    from .storage import open_run_dir

    cfg = _config(args) if args.config is not None else None  # a bad --config fails before a bucket is read
    with open_run_dir(args.out) as out:
        run_pipeline(cfg if cfg is not None else _config(args, out), out, force=args.force)


def _cmd_stage(args) -> None:
    from .pipeline import run_stage
    from .stages import get_stage

    stage = get_stage(args.command)
    cfg = _config(args) if args.config is not None else None  # a bad --config fails before a bucket is read
    options = {name: getattr(args, name) for name in stage.options}
    from .storage import open_run_dir

    with open_run_dir(args.out) as out:
        if cfg is None:
            cfg = _config(args, out)
        result = run_stage(cfg, out, stage.name, force=getattr(args, "force", False), **options)
        if stage.show is not None:
            print(stage.show(result, out), end="")


def _cmd_predict(args) -> None:
    import json

    from .artifacts import read_data_manifest
    from .runlog import setup_logging

    setup_logging(None)
    if args.text_pair and len(args.text_pair) != len(args.text):
        raise ConfigError(f"--text-pair given {len(args.text_pair)} time(s) for {len(args.text)} --text; give one per --text")
    known = sorted(read_data_manifest(args.run)["tasks"])  # checked before any model or adapter is loaded
    if args.task not in known:
        raise ConfigError(f"unknown task {args.task!r}; the run has {known}")
    texts = list(args.text)
    pairs: list[str | None] = list(args.text_pair) if args.text_pair else [None] * len(args.text)
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
            if row.get("text_pair") is not None and not isinstance(row["text_pair"], str):
                raise ConfigError(f"{args.input}:{lineno}: field 'text_pair' must be a string")
            texts.append(row["text"])
            pairs.append(row.get("text_pair"))
    if not texts:
        raise ConfigError("nothing to predict: give --text or --input")
    from .ensemble.predictor import EnsemblePredictor

    predictor = EnsemblePredictor(args.run, batch_size=args.batch_size)
    results = predictor.predict_with_probabilities(args.task, texts, pairs if any(p is not None for p in pairs) else None)
    for text, pair, r in zip(texts, pairs, results):
        row = {"text": text, **({"text_pair": pair} if pair is not None else {}), "label": r["label"],
               "probabilities": {k: round(v, 6) for k, v in r["probabilities"].items()}}
        print(json.dumps(row))


def _cmd_validate(args) -> None:
    """Everything ``run`` checks before training that needs no model weights: the config, every task's
    data, the model name, and with the model's tokenizer the verbalizer words (decoders) and how many
    samples ``model.max_length`` truncates (warnings)."""
    from .runlog import setup_logging
    from .tasks.load import load_tasks

    setup_logging(None, args.verbose)
    cfg = _config(args)
    from .models.registry import check_model_name

    try:
        kind = check_model_name(cfg.model)
    except EloraError as exc:
        raise ConfigError(str(exc) if "model.name_or_path" in str(exc) else f"model.name_or_path: {exc}") from None
    tasks = load_tasks(cfg, kind)
    from .models.classifier import TaskSpec
    from .models.tokenizer_check import check_with_tokenizer

    truncated = check_with_tokenizer(cfg.model, kind, tasks)
    print(f"config OK: {len(tasks)} tasks, model {cfg.model.name_or_path} ({kind}), adapter {cfg.adapter.type}")
    for t in tasks:
        words = f" words={TaskSpec.of(t).words()}" if kind == "decoder" else ""
        cut = truncated[t.name]
        cut_note = f" truncated={cut['count']}" if cut["count"] else ""
        print(f"  {t.name:24s} {t.sizes()} labels={t.labels}{words}{cut_note}")
        for note in t.notes:
            print(f"    note: {note}")


def _cmd_plan(args) -> None:
    import json

    from .plan import NodeShape, build_plan, parse_bytes
    from .runlog import setup_logging

    setup_logging(None, args.verbose)
    cfg = _config(args)
    here = NodeShape.this_machine()
    gpus = here.gpus if args.gpus is None else args.gpus
    if gpus and args.gpu_memory is None and not here.gpus:
        raise ConfigError("--gpus given without --gpu-memory (this machine has no GPU to read it from)")
    given = any(v is not None for v in (args.nodes, args.cpus, args.memory, args.gpus, args.gpu_memory, args.head_memory))
    node = NodeShape(
        cpus=args.cpus or here.cpus, host_bytes=parse_bytes(args.memory) if args.memory else here.host_bytes,
        gpus=gpus, gpu_bytes=parse_bytes(args.gpu_memory) if args.gpu_memory else (here.gpu_bytes if gpus else 0),
        nodes=args.nodes or 1, head_bytes=parse_bytes(args.head_memory) if args.head_memory else None,
        bf16=here.bf16 if not args.gpu_memory else True, source="given" if given else "this machine")
    plan = build_plan(cfg, node)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        sh = plan.shape
        print(f"model {sh.name} ({sh.kind}, {sh.model_type}): {sh.parameters / 1e9:.3g}B parameters; adapter "
              f"{sh.adapter_type} with {sh.adapter_parameters:,} trainable; on {node.describe()}")
        print(plan.table(), end="")
        print("the head holds no model weights (the model check runs as a Ray task with the featurize resources)")
    plan.check()
    if not args.json:
        print("plan OK: every stage fits")


def _cmd_config(args) -> None:
    print(dump_config(_config(args)), end="")


def _cmd_suite(args) -> None:
    from .config import SuiteConfig
    from .tasks.export import export_suite

    kw = {k: v for k, v in (("samples_per_task", args.samples_per_task), ("seed", args.seed)) if v is not None}
    path = export_suite(SuiteConfig(**kw), args.out)
    print(f"wrote the embedded suite to {args.out}; run it with: elora run --config {path} --out runs/suite")


def _cmd_formats(args) -> None:
    from .config import GENERIC_FORMATS
    from .tasks.builtin import BUILTIN_FORMATS

    print("generic formats: " + ", ".join(GENERIC_FORMATS))
    print("built-in readers (format: NAME, path: folder or {data_root}/<benchmark>/<Task>),")
    print("with the words decoder models score by default (label → word; tasks[].verbalizer overrides):")
    for name in sorted(BUILTIN_FORMATS):
        words = ", ".join(f"{lab} → {w}" for lab, w in BUILTIN_FORMATS[name].verbalizer.items())
        print(f"  {name:18s} {words}")


def _cmd_serve(args) -> None:
    from .runlog import setup_logging
    from .serve.launch import load_options, serve_run

    setup_logging(None, args.verbose)
    keys = ("replicas", "num_cpus", "num_gpus", "device", "max_batch_size", "batch_wait_timeout_s",
            "max_ongoing_requests", "max_items", "max_text_chars")
    opts = load_options(args.options, {"run": args.run, **{k: getattr(args, k) for k in keys}})
    serve_run(opts, host=args.host, port=args.port, name=args.name, route_prefix=args.route_prefix, detach=args.detach)


def _cmd_export(args) -> None:
    from .export import export_run
    from .runlog import setup_logging

    setup_logging(None)
    print(export_run(args.run, args.to, force=args.force).summary(), end="")


def _cmd_grow(args) -> None:
    __import__("elora_ray.grow.commands", fromlist=["run_command"]).run_command(args, _config)


COMMANDS = {
    "run": _cmd_run,
    "predict": _cmd_predict,
    "serve": _cmd_serve,
    "validate": _cmd_validate,
    "config": _cmd_config,
    "plan": _cmd_plan,
    "suite": _cmd_suite,
    "formats": _cmd_formats,
    "export": _cmd_export,
    "add-task": _cmd_grow,
    "remove-task": _cmd_grow,
}
"""The commands that are not stages; every stage of :mod:`elora_ray.stages` runs through :func:`_cmd_stage`."""


JOB_ALIASES = {"run_pipeline": "run"}
"""``jobs/<file>.py`` whose name is not the command's."""


def job_main(script: str, argv: list[str]) -> int:
    """Entry point of ``jobs/<name>.py``: ``elora <name> ARGS`` (the command comes from the file name,
    so every stage of :mod:`elora_ray.stages` is submitted the same way with ``ray job submit``)."""
    stem = Path(script).stem
    command = JOB_ALIASES.get(stem, stem.replace("_", "-"))
    if command not in COMMANDS:
        from .stages import get_stage

        command = get_stage(command).cli
    return main([command, *argv])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        from .runlog import set_verbose

        set_verbose(getattr(args, "verbose", False))
        COMMANDS.get(args.command, _cmd_stage)(args)
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
