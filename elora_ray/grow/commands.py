"""The ``elora add-task`` and ``elora remove-task`` subcommands (registered by :mod:`elora_ray.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub, common) -> None:
    p = sub.add_parser(
        "add-task", help="add (or drop) tasks of a finished run: only the changed group is retrained",
        description="Grow a finished run to the tasks of --config (the run's config with tasks added or removed; "
        "nothing else may change): the new tasks are featurised alone with the run's projection, placed in the "
        "nearest group (or a group of their own), only the groups whose tasks changed are retrained (warm-started), "
        "the kept adapters are run on the new tasks, and combination weights are refitted where their inputs "
        "changed. In place (atomically, when every step is done) or into --out. grow/report.md says what was "
        "recomputed. Rerun the same command to resume a killed grow.")
    common(p, out=False)
    p.add_argument("--run", type=Path, required=True, help="the finished run directory to grow")
    p.add_argument("--out", "-o", type=Path, default=None, help="write the grown run here and leave --run as it was")
    p = sub.add_parser(
        "remove-task", help="remove tasks from a finished run: their groups are retrained without them",
        description="Remove --task (repeatable) from a finished run: the same steps as add-task, with the run's own "
        "config less those tasks.")
    p.add_argument("--run", type=Path, required=True, help="the finished run directory")
    p.add_argument("--task", action="append", required=True, help="task to remove (repeatable)")
    p.add_argument("--out", "-o", type=Path, default=None, help="write the result here and leave --run as it was")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def _grow(run: Path, cfg, out: Path | None) -> None:
    from ..runlog import setup_logging
    from .stage import grow_run

    setup_logging(None)  # console only: with --out the source run must stay exactly as it was
    rec = grow_run(run, cfg, out)
    where = out or run
    print(f"grown run: {where} (grow {rec['generation']}, {rec['seconds']:.0f} s); groups: {rec['groups']}")
    for p in rec["placements"]:
        print(f"  {p['task']} -> group {p['group']}{' (new)' if p['new_group'] else ''}")
    print(f"  retrained: {', '.join(rec['retrained']) or 'none'}; ensemble {rec['evaluation']['split']} accuracy "
          f"{rec['evaluation']['avg_accuracy']:.4f}; report: {where / 'grow' / 'report.md'}")


def cmd_add_task(args: argparse.Namespace, load) -> None:
    if args.config is None:
        from ..errors import ConfigError

        raise ConfigError("add-task needs --config: the run's config.yaml with the new tasks added to its tasks: list")
    _grow(args.run, load(args), args.out)


def cmd_remove_task(args: argparse.Namespace, load=None) -> None:
    from .change import without_tasks

    _grow(args.run, without_tasks(args.run, args.task), args.out)


def run_command(args: argparse.Namespace, load) -> None:
    (cmd_add_task if args.command == "add-task" else cmd_remove_task)(args, load)
