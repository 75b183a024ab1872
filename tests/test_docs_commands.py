"""The README's and docs/ command blocks, run (or at least parsed) exactly as written.

- The README's quickstart ("your own data in five lines") runs as written in a fresh folder that
  holds the files it names; only the site (where the built-in readers' data lives) and, for the run,
  a smaller model through ``$ELORA_SET`` differ.
- docs/operations.md's TensorBoard command serves a real run's metrics.
- Every `elora`, `make` and `python jobs/...` command in any block parses with the real CLI, and
  every repository file it names exists, so the docs cannot drift from the code.
The cluster recipe of docs/operations.md runs in tests/test_job_submit.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from docs_blocks import REPO, block_after, blocks, commands, site

README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]
#: site-specific paths in the docs: the user's own files and shared storage
USER_PATHS = ("my.yaml", "configs/my.yaml", "/shared/", "runs/")


def _venv_bin() -> Path:
    venv = REPO / ".venv" / "bin"
    return venv if (venv / "elora").exists() else Path(sys.executable).parent


def _write_quickstart_data(root: Path) -> None:
    """The files the README's config names, and a small copy of the built-in RTE files."""
    data = root / "data"
    data.mkdir()
    with (data / "reviews.csv").open("w") as fh:
        fh.write("review,stars\n")
        for i in range(30):
            fh.write(f"a lovely and warm film number {i},5\nan awful and dull film number {i},1\n")
    with (data / "tickets.jsonl").open("w") as fh:
        for i in range(30):
            fh.write(json.dumps({"text": f"my printer {i} is broken", "label": "hardware"}) + "\n")
            fh.write(json.dumps({"text": f"reset my password {i} please", "label": "account"}) + "\n")
    rte = root / "shared_data" / "superglue" / "RTE"
    rte.mkdir(parents=True)
    for name, n in (("train.jsonl", 40), ("val.jsonl", 20)):
        with (rte / name).open("w") as fh:
            for i in range(n):
                fh.write(json.dumps({"premise": f"The cat {i} sat on the mat.", "hypothesis": f"A cat {i} sat.",
                                     "label": "entailment" if i % 2 else "not_entailment", "idx": i}) + "\n")


@pytest.mark.slow
def test_readme_quickstart_runs_as_written(tmp_path):
    config = block_after(README, "## Your own data in five lines", "yaml")
    cmds = commands(block_after(README, "## Your own data in five lines", "bash"))
    assert [c.split()[:2] for c in cmds] == [[".venv/bin/elora", "validate"], [".venv/bin/elora", "run"]]
    (tmp_path / "my.yaml").write_text(config)
    _write_quickstart_data(tmp_path)
    (tmp_path / ".venv").symlink_to(_venv_bin().parent)
    env = {**os.environ, "ELORA_DATA_ROOT": str(tmp_path / "shared_data"), "HF_HUB_OFFLINE": "1"}
    env.pop("ELORA_SET", None)
    env.pop("RAY_ADDRESS", None)

    r = subprocess.run(cmds[0], shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "config OK: 3 tasks" in r.stdout and "default" in r.stdout  # the real default model's name was checked
    assert not (tmp_path / "runs").exists()  # validate writes nothing

    small = ["model.name_or_path=tiny-bert", "featurize.dim=16", "estimate.num_subsets=20", "train.epochs=1",
             "baselines.methods=[single_adapter]"]
    r = subprocess.run(cmds[1], shell=True, cwd=tmp_path, env={**env, "ELORA_SET": ";".join(small)},
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "overrides from $ELORA_SET" in r.stderr  # the override is announced, never silent
    run = tmp_path / "runs" / "mine"
    report = json.loads((run / "report.json").read_text())
    assert sorted(report["tasks"]) == ["reviews", "rte", "tickets"]
    text = (run / "report.md").read_text()
    # what the README promises report.md holds: groups, a 95% interval, the most-common-label baseline
    assert "95%" in text and "most common label" in text.lower()
    assert all(t in text for t in ("reviews", "tickets", "rte"))


#: "Using it" commands that are only parsed here: each runs minutes of real work and has its own test
#: (tests/test_tune.py, test_fidelity.py, test_analyze_sharpness.py, test_federated.py)
HEAVY = {"tune", "fidelity", "calibrate", "analyze", "federated"}


@pytest.mark.slow
def test_readme_using_it_commands_run_as_written(tiny_pipeline, tmp_path):
    """Every "Using it" command on runs/demo, the config commands on the quickstart's my.yaml, suite and
    formats run as written, in order, on a copy of the session's tiny run ($ELORA_SET holds the tiny
    settings it was made with, so the commands find it current). Commands on runs/x (a second full
    run of my.yaml) and the HEAVY ones are parsed only (test_every_documented_command_parses...)."""
    import shutil

    from conftest import TINY

    _, run, _ = tiny_pipeline
    shutil.copytree(run, tmp_path / "runs" / "demo", symlinks=True)
    (tmp_path / "my.yaml").write_text(block_after(README, "## Your own data in five lines", "yaml"))
    _write_quickstart_data(tmp_path)
    (tmp_path / ".venv").symlink_to(_venv_bin().parent)
    env = {**os.environ, "ELORA_DATA_ROOT": str(tmp_path / "shared_data"), "ELORA_SET": ";".join(TINY)}
    # One local Ray head for all the commands (as on a machine where `ray start --head` runs): each
    # command connects through $RAY_ADDRESS instead of starting and stopping its own Ray.
    with _local_ray_head() as address:
        env["RAY_ADDRESS"] = address
        ran = _run_using_it(tmp_path, env)
    assert {"run", "featurize", "estimate", "cluster", "train", "boost", "combine", "baselines", "evaluate",
            "predict", "validate", "config", "suite", "formats"} <= set(ran), ran
    assert (tmp_path / "suite" / "config.yaml").is_file()


@contextlib.contextmanager
def _local_ray_head():
    """A Ray head of its own (ports, temp dir) for the duration; yields its GCS address."""
    import shutil
    import tempfile

    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    ports = [_free_port() for _ in range(6)]
    ray = str(_venv_bin() / "ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = [ray, "start", "--head", f"--port={ports[0]}", "--num-cpus=2", "--include-dashboard=false",
             "--node-ip-address=127.0.0.1", f"--dashboard-agent-listen-port={ports[1]}",
             f"--dashboard-agent-grpc-port={ports[2]}", f"--metrics-export-port={ports[3]}",
             f"--runtime-env-agent-port={ports[4]}", f"--temp-dir={temp}", "--disable-usage-stats"]
    r = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    try:
        yield f"127.0.0.1:{ports[0]}"
    finally:  # exactly its processes: `ray stop` would stop every Ray instance on the machine
        for proc in _processes_using(temp) + _processes_using(f"127.0.0.1:{ports[0]}"):
            with contextlib.suppress(Exception):
                proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


def _processes_using(temp: str) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp in part for part in (proc.info["cmdline"] or [])):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _run_using_it(tmp_path: Path, env: dict) -> list[str]:
    ran = []
    for cmd in commands(block_after(README, "## Using it", "bash")):
        words = shlex.split(cmd)
        if "runs/x" in words or words[1] in HEAVY:
            continue
        r = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"`{cmd}` failed:\n{(r.stdout + r.stderr)[-3000:]}"
        ran.append(words[1])
        if words[1] == "predict":  # one JSON line: the label and every label's probability
            (out,) = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
            assert out["label"] in out["probabilities"], out
            assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        if words[1] == "cluster":  # the command's own --set wins over $ELORA_SET's cluster.num_groups=2
            assert len(json.loads((tmp_path / "runs" / "demo" / "groups.json").read_text())["groups"]) == 3
    return ran


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_tensorboard_command_serves_a_run(tiny_pipeline, tmp_path):
    import shutil

    _, run, _ = tiny_pipeline
    (cmd,) = commands(block_after(REPO / "docs" / "operations.md", "**Watching a run.**", "bash"))
    shutil.copytree(run / "tensorboard", tmp_path / "runs" / "demo" / "tensorboard")
    (tmp_path / ".venv").symlink_to(_venv_bin().parent)
    port = _free_port()
    cmd = site(cmd, {"runs/demo/tensorboard": f"runs/demo/tensorboard --port {port} --host 127.0.0.1"})
    proc = subprocess.Popen(shlex.split(cmd), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, runs = time.time() + 120, []
        while time.time() < deadline and not runs:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as resp:
                    runs = json.loads(resp.read())
            except OSError:
                time.sleep(1)
        # TensorBoard found the training runs the pipeline wrote (one per adapter scope)
        assert any("train" in r for r in runs), runs
    finally:
        proc.kill()
        proc.wait()


def _documented_commands() -> list[tuple[str, str]]:
    out = []
    for md in DOCS:
        for block in blocks(md):
            for cmd in commands(block):
                out.append((md.relative_to(REPO).as_posix(), cmd))
    return out


def _make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))


def test_every_documented_command_parses_and_names_existing_files():
    from elora_ray.cli import build_parser

    parser = build_parser()
    found = _documented_commands()
    assert len(found) > 30
    checked = 0
    for where, cmd in found:
        words = shlex.split(cmd)
        if words[0].endswith("/elora") or words[0] == "elora":
            try:
                parser.parse_args(words[1:])
            except SystemExit as exc:
                if exc.code != 0:
                    pytest.fail(f"{where}: `{cmd}` does not parse with the current CLI")
            checked += 1
        elif words[0] == "make":
            assert set(words[1:]) <= _make_targets(), f"{where}: `{cmd}` names an unknown make target"
            checked += 1
        elif "python" in words[0] and len(words) > 1 and words[1].startswith("jobs/"):
            assert (REPO / words[1]).is_file(), f"{where}: `{cmd}`: no {words[1]}"
            checked += 1
        for flag, value in zip(words, words[1:]):
            if flag in ("--config", "-c") and not value.startswith(USER_PATHS) and value != "my.yaml":
                assert (REPO / value).is_file(), f"{where}: `{cmd}`: no {value} in the repository"
    assert checked > 25
