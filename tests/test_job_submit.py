"""`ray job submit` end to end: a local head with the dashboard, token authentication on, the
pipeline submitted as a Ray job from the repository's working dir, artifacts checked.

The head runs in its own temp dir and on its own ports (so it never meets the test session's Ray
instance) and is torn down by killing exactly its processes — never `ray stop`, which would stop
every Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _kill_cluster(temp_dir: str) -> None:
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@pytest.fixture
def ray_head(tmp_path):
    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("the ray CLI is not installed beside this Python")
    temp_dir = f"/tmp/elora-jobtest-{secrets.token_hex(4)}"  # short: Ray's socket paths have a length limit
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = dict(os.environ)
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    })
    env.pop("RAY_ADDRESS", None)
    gcs, dash, agent, agent_grpc, metrics, rt_env = _free_ports(6)
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}", "--num-cpus=2",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=180)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


LIST_UPLOAD = (
    "import json, os; files = [os.path.relpath(os.path.join(d, f)) for d, _, fs in os.walk('.') for f in fs]; "
    "print(json.dumps({'files': sorted(files), 'bytes': sum(os.path.getsize(f) for f in files)}))"
)


def _submit(address: str, env: dict, entrypoint: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    ray = str(Path(sys.executable).parent / "ray")
    deadline = time.time() + 60
    while True:  # the job agent may need a few seconds after `ray start`
        r = subprocess.run([ray, "job", "submit", "--address", address, "--working-dir", str(REPO), "--", *entrypoint],
                           env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        if "No available agent" not in r.stdout + r.stderr or time.time() > deadline:
            return r
        time.sleep(3)


@pytest.mark.slow
def test_pipeline_runs_as_a_ray_job_with_token_auth(ray_head, tmp_path):
    address, env = ray_head
    # without the token the dashboard refuses the submission
    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN_PATH",)}
    no_token["HOME"] = str(tmp_path)  # and no ~/.ray/auth_token either
    denied = _submit(address, no_token, ["python", "-c", "print(1)"], timeout=120)
    assert denied.returncode != 0 and "auth" in (denied.stdout + denied.stderr).lower()

    # The uploaded package holds code, not models, data or run outputs (.rayignore; checked
    # with .gitignore switched off, so .rayignore alone must keep .venv, weights and runs out).
    listing = _submit(address, {**env, "RAY_RUNTIME_ENV_IGNORE_GITIGNORE": "1"}, ["python", "-c", LIST_UPLOAD], timeout=300)
    assert listing.returncode == 0, (listing.stdout + listing.stderr)[-3000:]
    uploaded = json.loads(next(ln for ln in listing.stdout.splitlines() if ln.startswith("{")))
    assert "jobs/run_pipeline.py" in uploaded["files"] and "elora_ray/cli.py" in uploaded["files"]
    heavy = [f for f in uploaded["files"] if f.startswith((".venv/", ".git/", "runs/", "benchmarks/runs/"))
             or f.endswith((".safetensors", ".gguf", ".parquet", ".bin"))]
    assert not heavy, heavy[:10]
    assert uploaded["bytes"] < 20e6, uploaded["bytes"]

    out = tmp_path / "run"
    r = _submit(address, env, [
        "python", "jobs/run_pipeline.py", "--out", str(out),
        "--set", "model.name_or_path=tiny-bert", "--set", "suite.samples_per_task=24", "--set", "featurize.dim=16",
        "--set", "suite.tasks_per_group=[2,1]", "--set", "estimate.num_subsets=20", "--set", "train.epochs=1",
        "--set", "baselines.methods=[single_adapter]",
    ])
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "succeeded" in log
    report = json.loads((out / "report.json").read_text())
    assert {"ensemble", "single_adapter"} <= set(report["methods"])
    assert report["groups"] and all(g for g in report["groups"])
    for f in ("affinity.csv", "groups.json", "report.md", "run.log"):
        assert (out / f).is_file(), f
    # the job ran on the submitted cluster, not on a Ray instance of its own
    assert "connected to Ray at" in (out / "run.log").read_text()
