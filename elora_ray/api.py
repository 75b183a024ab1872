"""``elora_ray.run``: the whole pipeline from Python, as ``elora run`` does it."""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig, load_config


def run(config: RunConfig | str | Path | None, out: str | Path, *, overrides: list[str] | None = None,
        force: bool = False) -> dict:
    """Run every pipeline stage into ``out`` (resumable) and return the report (``report.json``).

    ``out``: a local path, or a bucket URI (``s3://bucket/prefix``; see :mod:`elora_ray.storage`).

    ``config``: a :class:`RunConfig`, a YAML path, or None for the embedded default; ``overrides``
    are ``key=value`` strings as with ``--set`` (only with a path or None).
    """
    from .pipeline import run_pipeline

    if isinstance(config, RunConfig):
        if overrides:
            raise ValueError("overrides apply to a config file; with a RunConfig use cfg.model_copy(update=...) "
                             "or load_config(path, overrides)")
        cfg = config
    else:
        cfg = load_config(config, list(overrides or []))
    from .storage import open_run_dir

    with open_run_dir(out if isinstance(out, str) else Path(out)) as local:
        return run_pipeline(cfg, local, force=force)
