"""Multi-node: a head with no CPUs plus two 1-CPU worker nodes on this machine
(``ray.cluster_utils.Cluster``); featurisation actors and group-adapter training must land on
both workers. Runs in a subprocess so the test session's own Ray instance is left alone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json, sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from elora_ray.config import load_config
from elora_ray.pipeline import run_stages
from elora_ray.artifacts import read_job_record

ports = [int(p) for p in sys.argv[2].split(",")]
out = Path(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 0, "include_dashboard": False, "dashboard_agent_listen_port": ports[0], "metrics_export_port": ports[1]})
workers = [cluster.add_node(num_cpus=1, dashboard_agent_listen_port=ports[2 + 2 * i], metrics_export_port=ports[3 + 2 * i])
           for i in range(2)]
cluster.wait_for_nodes()
ray.init(address=cluster.address)
try:
    # enough small batches that both actors get work even if one starts seconds after the other
    cfg = load_config(None, ["model.name_or_path=tiny-bert", "suite.samples_per_task=120", "featurize.dim=16",
                             "featurize.actors=2", "featurize.batch_size=2",
                             "estimate.num_subsets=20", "train.epochs=1", "cluster.num_groups=4"])
    from elora_ray.raysession import check_shared_storage
    checked = check_shared_storage(out)  # all three nodes see it (one machine)
    run_stages(cfg, out, until="train")
    groups = json.loads((out / "groups.json").read_text())["groups"]
    records = [read_job_record(out, f"group-{i}") for i in range(len(groups))]
    manifest = json.loads((out / "features" / "manifest.json").read_text())
    print("RESULT " + json.dumps({
        "workers": [w.node_id for w in workers], "head": cluster.head_node.node_id,
        "feature_nodes": manifest["samples_per_node"], "train_nodes": [r["node_id"] for r in records],
        "storage_checked_nodes": checked}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_featurize_and_training_spread_over_two_worker_nodes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run"), ",".join(map(str, _free_ports(6)))],
                       env=env, capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, (r.stdout + r.stderr)[-4000:]
    res = json.loads(lines[-1][len("RESULT "):])
    workers = set(res["workers"])
    # featurisation: both worker nodes computed samples, the CPU-less head none
    assert set(res["feature_nodes"]) == workers, res["feature_nodes"]
    assert all(n > 0 for n in res["feature_nodes"].values())
    # training: the group adapters were trained on both workers
    assert set(res["train_nodes"]) == workers, res["train_nodes"]
    assert res["storage_checked_nodes"] == 3  # the shared-storage check ran a probe on every node


def test_a_run_directory_some_node_cannot_see_stops_at_once(tmp_path, monkeypatch):
    """The decision of the shared-storage check, with the per-node probe replaced (on one machine
    every node sees every path): a blind node is named, and the marker file is removed."""
    import ray

    from elora_ray.errors import ConfigError
    from elora_ray.raysession import check_shared_storage

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"NodeID": "a" * 56, "Alive": True, "NodeManagerAddress": "10.0.0.1"},
                                               {"NodeID": "b" * 56, "Alive": True, "NodeManagerAddress": "10.0.0.2"}])
    seen_paths = []

    def probe(path, token):
        seen_paths.append(path)
        assert Path(path).read_text() == token  # the driver wrote it before asking
        return {"a" * 56: True, "b" * 56: False}

    with pytest.raises(ConfigError, match=r"--out .* is not visible from 1 of 2 Ray nodes: 10\.0\.0\.2 \(bbbbbbbb\)"):
        check_shared_storage(tmp_path / "run", probe=probe)
    assert not Path(seen_paths[0]).exists()
    assert check_shared_storage(tmp_path / "run", probe=lambda p, t: {"a" * 56: True, "b" * 56: True}) == 2
