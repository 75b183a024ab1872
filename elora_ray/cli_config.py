"""Which configuration a command runs with: ``--config`` (or the run folder's own ``config.yaml``, or the embedded
default), then ``$ELORA_SET``, then the command line's ``--set``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .config import ConfigError, RunConfig, load_config
from .layout import RunLayout

ENV_OVERRIDES = "ELORA_SET"


def command_config(args, run_dir: Path | None = None) -> RunConfig:
    """The config of ``--config`` with the overrides of ``$ELORA_SET``, then the command line's ``--set``.

    Without ``--config``, a command on an existing run directory (``run_dir`` with its prepared data)
    starts from that run's own config, the one its last successful command ran with (announced on stderr): a stage
    command then reuses what ``elora run`` computed instead of redoing it with the embedded default's
    settings. Elsewhere it is the embedded default.

    ``ELORA_SET`` holds ``key=value`` overrides separated by ``;`` (e.g. for a Ray job's runtime
    environment, or to run documented commands on a smaller model). Like any environment setting
    they come before the command line's, so an explicit ``--set`` of the same key wins; they are
    announced on stderr, so they are never silent.
    """
    extra = [o.strip() for o in os.environ.get(ENV_OVERRIDES, "").split(";") if o.strip()]
    bad = [o for o in extra if "=" not in o]
    if bad:
        raise ConfigError(f"${ENV_OVERRIDES}: {bad[0]!r} is not key=value (entries are separated by ';')")
    if extra:
        print(f"elora: overrides from ${ENV_OVERRIDES}: {' '.join(extra)}", file=sys.stderr)
    path = args.config
    if path is None and run_dir is not None:
        layout = RunLayout(Path(run_dir))
        if layout.config.is_file() and layout.data_manifest.is_file():  # a run's (not, e.g., a suite's)
            path = layout.config
            print(f"elora: config: {path} (this run's own; give --config to use another)", file=sys.stderr)
    return load_config(path, [*extra, *args.overrides])
