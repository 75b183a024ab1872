"""The bad-input corpus (tests/bad_inputs/): every bad config or data file gets a clear error that
names the file, line and field, and leaves an existing run directory exactly as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from elora_ray.cli import main

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())


def _case_id(case: dict) -> str:
    return Path(case["config"]).stem + ("+" + "+".join(case["set"]) if case.get("set") else "")


def _snapshot(run: Path) -> dict[str, str]:
    """sha256 of every file in the run directory except the append-only log."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*")) if p.is_file() and p.name != "run.log"
    }


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad-inputs") / "run"
    assert main(["prepare", "--config", str(CORPUS / "configs" / "good.yaml"), "--out", str(out)]) == 0
    assert (out / "data" / "manifest.json").is_file() and (out / "config.yaml").is_file()
    return out


def test_every_corpus_config_has_a_case():
    used = {Path(c["config"]).name for c in CASES}
    on_disk = {p.name for p in (CORPUS / "configs").glob("*.yaml")}
    assert on_disk - used == {"good.yaml"} or on_disk - used == set(), sorted(on_disk - used)
    assert all((CORPUS / c["config"]).is_file() for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_input_is_a_clear_error_and_the_run_stays_intact(case, prepared_run, capsys):
    before = _snapshot(prepared_run)
    log_before = (prepared_run / "run.log").read_text()
    args = ["run", "--config", str(CORPUS / case["config"]), "--out", str(prepared_run)]
    for s in case.get("set", []):
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert any(line.startswith("error: ") for line in err.splitlines()), err
    assert "Traceback" not in err
    for needle in case["error"]:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert _snapshot(prepared_run) == before
    assert not list(prepared_run.rglob("*.tmp"))
    log_after = (prepared_run / "run.log").read_text()
    assert log_after.startswith(log_before)
    if "invalid configuration" not in err and "YAML" not in err and "--set" not in err and "mapping" not in err:
        assert "run failed: " in log_after[len(log_before):]  # data errors reach the run log too


def test_a_good_config_still_runs_after_the_bad_ones(prepared_run):
    assert main(["prepare", "--config", str(CORPUS / "configs" / "good.yaml"), "--out", str(prepared_run)]) == 0
