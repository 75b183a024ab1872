"""The structure a contributor relies on: layers without cycles, one stage list behind the
pipeline, the CLI and jobs/, one adapter-type table, a light public API, small modules."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import elora_ray
from elora_ray.adapter_types import ADAPTER_TYPES
from elora_ray.cli import COMMANDS, build_parser, job_main
from elora_ray.stages import PIPELINE, SIDE, STAGES, get_stage

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "elora_ray"


def test_import_contracts_hold():
    """`lint-imports` (pyproject: [tool.importlinter]): CLI → pipeline → stages → core, no cycles."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is a test dependency: pip install -e '.[test]'"
    r = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_every_import_resolves_including_the_lazy_ones():
    """Function-level imports (kept lazy so `elora --help` stays fast) are checked like top-level ones:
    each ``from X import name`` inside elora_ray names a module that exists and defines ``name``."""
    import importlib

    broken = []
    for path in PACKAGE.rglob("*.py"):
        package = ".".join(path.relative_to(REPO).parts[:-1])  # what relative imports are relative to
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not (node.level or (node.module or "").startswith("elora_ray")):
                continue
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            try:
                target = importlib.import_module(base)
            except ImportError as exc:
                broken.append(f"{path.relative_to(REPO)}:{node.lineno}: {base} ({exc})")
                continue
            for alias in node.names:
                if alias.name != "*" and not hasattr(target, alias.name):
                    try:
                        importlib.import_module(f"{base}.{alias.name}")
                    except ImportError:
                        broken.append(f"{path.relative_to(REPO)}:{node.lineno}: {base}.{alias.name}")
    assert broken == []


def test_no_module_over_400_lines():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 400} == {}


def test_no_stage_imports_another_stage_to_find_a_file():
    """Run-directory names come from elora_ray.layout: no module but layout defines *_DIR / *_FILE constants,
    and nothing outside layout/artifacts spells the shared artifacts' names. (The federated setting keeps
    its own files under federated/, and `elora suite` writes an export folder, not a run directory.)"""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ("layout.py", "artifacts.py", "tasks/export.py") or rel.startswith("federated/"):
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name) and (t.id.endswith("_DIR") or t.id.endswith("_FILE")):
                        offenders.append(f"{path.relative_to(REPO)}: {t.id}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in ("affinity.csv", "groups.json", "manifest.json",
                                                                  "members.json", "weights.json", "evaluation.json"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_every_stage_is_a_subcommand_with_a_job_entry_point():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = set(sub.choices)
    assert {s.cli for s in STAGES} <= commands
    assert commands == {s.cli for s in STAGES} | set(COMMANDS)
    jobs = {p.stem for p in (REPO / "jobs").glob("*.py")}
    assert jobs == {s.cli.replace("-", "_") for s in STAGES} | {"run_pipeline", "predict", "serve", "add_task", "remove_task"}
    for stem in jobs:
        text = (REPO / "jobs" / f"{stem}.py").read_text()
        assert "job_main(__file__, sys.argv[1:])" in text, stem
    for s in STAGES:  # forceable stages take --force, the others do not
        p = sub.choices[s.cli]
        flags = {o for a in p._actions for o in a.option_strings}
        if s.name == "analyze":
            flags = {o for a in p._actions[-1].choices["sharpness"]._actions for o in a.option_strings}
        assert ("--force" in flags) == s.forceable, s.name
        assert {"--out", "--config", "--set", "--verbose"} <= flags, s.name


def test_job_main_dispatches_by_file_name(monkeypatch):
    seen = []
    monkeypatch.setattr("elora_ray.cli.main", lambda argv: seen.append(argv) or 0)
    assert job_main("/x/jobs/estimate.py", ["--out", "r"]) == 0
    assert job_main("/x/jobs/check_model.py", ["--out", "r"]) == 0
    assert job_main("/x/jobs/run_pipeline.py", ["--out", "r"]) == 0
    assert seen == [["estimate", "--out", "r"], ["check-model", "--out", "r"], ["run", "--out", "r"]]
    with pytest.raises(ValueError, match="unknown stage"):
        job_main("/x/jobs/nope.py", [])


def test_stage_list_order_and_lookup():
    assert [s.name for s in PIPELINE] == ["prepare", "model_check", "featurize", "estimate", "cluster", "train", "boost",
                                          "combine", "baselines", "evaluate"]
    assert all(s.after in {p.name for p in PIPELINE} | {None} for s in SIDE)
    assert get_stage("check-model") is get_stage("model_check")
    with pytest.raises(ValueError, match="stages: prepare, check-model"):
        get_stage("featurise")


def test_public_api_is_light_and_complete():
    code = ("import sys, elora_ray; assert 'torch' not in sys.modules and 'ray' not in sys.modules; "
            "print(sorted(elora_ray.__all__))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    for name in elora_ray.__all__:
        assert getattr(elora_ray, name) is not None
    assert elora_ray.run_stage.__module__ == "elora_ray.pipeline"
    with pytest.raises(AttributeError):
        elora_ray.not_a_name  # noqa: B018


def test_adapter_types_are_one_table():
    from elora_ray.adapters.families import get_family
    from elora_ray.config import AdapterConfig, ConfigError, load_config
    from elora_ray.featurize.gradients import INPUT_SIDE, OUTPUT_SIDE

    assert set(ADAPTER_TYPES) == {"lora", "qlora", "mplora", "adapter", "qadapter"}
    for t in ADAPTER_TYPES.values():
        assert get_family(t.family).name == t.family
        assert set(t.zero_side) <= set(OUTPUT_SIDE) and set(t.input_side) <= set(INPUT_SIDE)
        assert t.quantized_counterpart is None or ADAPTER_TYPES[t.quantized_counterpart].quantized
        AdapterConfig(type=t.name)
    with pytest.raises(ConfigError, match="unknown adapter type 'dora'"):
        load_config(None, ["adapter.type=dora"])
