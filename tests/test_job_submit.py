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
from docs_blocks import block_after, site

REPO = Path(__file__).resolve().parents[1]
OPERATIONS = REPO / "docs" / "operations.md"


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


def _write_tiny_job_config(shared: Path) -> Path:
    """A small config on "shared storage" whose data paths are relative to the config's folder."""
    data = shared / "data"
    data.mkdir(parents=True)
    words = {"pos": ["great", "warm", "lovely", "superb"], "neg": ["awful", "dull", "poor", "bad"]}
    for task, (a, b) in {"reviews": ("pos", "neg"), "tickets": ("neg", "pos")}.items():
        rows = [{"text": f"{words[lab][i % 4]} item number {i}", "label": lab}
                for i in range(40) for lab in (a, b)]
        (data / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = shared / "configs" / "my.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("""model: {name_or_path: tiny-bert}
tasks:
  - {name: reviews, train: ../data/reviews.jsonl}
  - {name: tickets, train: ../data/tickets.jsonl}
featurize: {dim: 16}
estimate: {num_subsets: 20}
train: {epochs: 1}
baselines: {methods: [single_adapter]}
""")
    return cfg


@pytest.mark.slow
def test_cluster_recipe_of_the_docs_runs_as_written(tmp_path):
    """docs/operations.md's three blocks (head, worker, submit) run as written, on this machine.

    Only the values the docs mark as the user's change: HEAD_IP, the ports (free ones, plus the
    extra ports and temp dir that keep this head away from any other Ray on the machine) and the
    shared-storage root. The shell starts WITHOUT the venv on PATH, so `source .venv/bin/activate`
    must be what provides `ray` and the job's `python`; HOME is empty, so the token must come from
    `ray get-auth-token --generate`.
    """
    if not (REPO / ".venv" / "bin" / "activate").is_file():
        pytest.skip("the docs assume the repository's .venv (make install)")
    head_block, worker_block, submit_block = (block_after(OPERATIONS, "On the head machine:"),
                                              block_after(OPERATIONS, "On every other machine"),
                                              block_after(OPERATIONS, "To submit, from any machine"))
    temp_dir = f"/tmp/elora-jobtest-{secrets.token_hex(4)}"  # short: Ray's socket paths have a length limit
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "LANG": "C.UTF-8"}
    gcs, dash, *p = _free_ports(10)
    isolate_head = (f"--node-ip-address=127.0.0.1 --dashboard-agent-listen-port={p[0]} --dashboard-agent-grpc-port={p[1]} "
                    f"--metrics-export-port={p[2]} --runtime-env-agent-port={p[3]} --num-cpus=2 --temp-dir={temp_dir} "
                    "--disable-usage-stats")
    isolate_worker = (f"--node-ip-address=127.0.0.1 --dashboard-agent-listen-port={p[4]} --dashboard-agent-grpc-port={p[5]} "
                      f"--metrics-export-port={p[6]} --runtime-env-agent-port={p[7]} --num-cpus=1 --disable-usage-stats "
                      # its own temp dir, as on a separate machine: sharing the head's, the worker node's
                      # runtime-env agent deletes the unpacked working dir the job's driver runs in
                      f"--temp-dir={temp_dir}w")

    def bash(block: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-e", "-c", block], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)

    shared = tmp_path / "shared"
    _write_tiny_job_config(shared)
    try:
        r = bash(site(head_block, {"--port=6379": f"--port={gcs}", "--dashboard-host=0.0.0.0": "--dashboard-host=127.0.0.1",
                                   "--dashboard-port=8265": f"--dashboard-port={dash} {isolate_head}"}))
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        token = home / ".ray" / "auth_token"
        assert token.is_file() and len(token.read_text().strip()) >= 32  # where the docs say the token is
        r = bash(site(worker_block, {"HEAD_IP:6379": f"127.0.0.1:{gcs} {isolate_worker}"}))
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        r = bash(f"source .venv/bin/activate && RAY_AUTH_MODE=token python -c \"import ray; ray.init(address='127.0.0.1:{gcs}', "
                 "logging_level='ERROR'); print('alive', sum(n['Alive'] for n in ray.nodes()))\"")
        assert "alive 2" in r.stdout, (r.stdout + r.stderr)[-3000:]  # the worker joined the head

        address = f"http://127.0.0.1:{dash}"
        venv_env = {**env, "PATH": f"{REPO / '.venv' / 'bin'}:{env['PATH']}", "RAY_AUTH_MODE": "token"}
        # without the token the dashboard refuses the submission
        denied = _submit(address, {**venv_env, "HOME": str(tmp_path)}, ["python", "-c", "print(1)"], timeout=120)
        assert denied.returncode != 0 and "auth" in (denied.stdout + denied.stderr).lower()
        # The uploaded package holds code, not models, data or run outputs (.rayignore; checked
        # with .gitignore switched off, so .rayignore alone must keep .venv, weights and runs out).
        listing = _submit(address, {**venv_env, "RAY_RUNTIME_ENV_IGNORE_GITIGNORE": "1"}, ["python", "-c", LIST_UPLOAD],
                          timeout=300)
        assert listing.returncode == 0, (listing.stdout + listing.stderr)[-3000:]
        uploaded = json.loads(next(ln for ln in listing.stdout.splitlines() if ln.startswith("{")))
        assert "jobs/run_pipeline.py" in uploaded["files"] and "elora_ray/cli.py" in uploaded["files"]
        heavy = [f for f in uploaded["files"] if f.startswith((".venv/", ".git/", "runs/", "benchmarks/runs/"))
                 or f.endswith((".safetensors", ".gguf", ".parquet", ".bin"))]
        assert not heavy, heavy[:10]
        assert uploaded["bytes"] < 20e6, uploaded["bytes"]

        r = bash(site(submit_block, {"HEAD_IP:8265": f"127.0.0.1:{dash}", "/shared/": f"{shared}/"}), timeout=900)
        log = r.stdout + r.stderr
        assert r.returncode == 0, log[-3000:]
        assert "succeeded" in log
        out = shared / "runs" / "exp1"
        report = json.loads((out / "report.json").read_text())
        assert {"ensemble", "single_adapter"} <= set(report["methods"])
        assert sorted(report["tasks"]) == ["reviews", "tickets"]  # the config's relative data paths resolved
        for f in ("affinity.csv", "groups.json", "report.md", "run.log"):
            assert (out / f).is_file(), f
        run_log = (out / "run.log").read_text()
        # the job ran on the submitted two-node cluster, not on a Ray instance of its own
        assert "connected to Ray at" in run_log
        nodes = {json.loads((out / "train" / "jobs" / f).read_text())["node_id"]
                 for f in os.listdir(out / "train" / "jobs")}
        assert nodes, "no job recorded the node it ran on"
    finally:
        _kill_cluster(temp_dir)
        _kill_cluster(f"127.0.0.1:{gcs}")
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(f"{temp_dir}w", ignore_errors=True)
