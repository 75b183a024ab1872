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

from test_storage import s3  # noqa: F401 - the local S3 server fixture

#: a CPU-less head and two 1-CPU worker nodes on this machine (ports from argv[2]); a script's body
#: follows, indented, inside the try block whose end (CLUSTER_END) shuts the cluster down
CLUSTER = r"""
import json, sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from elora_ray.config import load_config
from elora_ray.pipeline import run_stages

ports = [int(p) for p in sys.argv[2].split(",")]
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 0, "include_dashboard": False, "dashboard_agent_listen_port": ports[0], "metrics_export_port": ports[1]})
workers = [cluster.add_node(num_cpus=1, dashboard_agent_listen_port=ports[2 + 2 * i], metrics_export_port=ports[3 + 2 * i])
           for i in range(2)]
cluster.wait_for_nodes()
ray.init(address=cluster.address)
try:
"""
CLUSTER_END = r"""
finally:
    ray.shutdown()
    cluster.shutdown()
"""

SCRIPT = CLUSTER + r"""
    from elora_ray.artifacts import read_job_record
    out = Path(sys.argv[1])
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
""" + CLUSTER_END


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


BUCKET_SCRIPT = CLUSTER + r"""
    from elora_ray.pipeline import _CHECKED
    from elora_ray.storage import open_run_dir
    uri = sys.argv[1]
    cfg = load_config(None, ["model.name_or_path=tiny-bert", "suite.samples_per_task=120", "featurize.dim=16",
                             "featurize.actors=2", "featurize.batch_size=2"])
    with open_run_dir(uri) as out:
        run_stages(cfg, out, until="featurize")
        checked = str(out.resolve()) in _CHECKED
    print("RESULT " + json.dumps({"workers": [w.node_id for w in workers], "local": str(out), "checked": checked}))
""" + CLUSTER_END


@pytest.mark.slow
def test_bucket_run_on_a_multi_node_cluster_with_a_shared_working_copy(s3, tmp_path):
    """`--out s3://…` on three nodes: the working copy lives under $ELORA_REMOTE_WORKDIR (here a
    path every node of this one-machine cluster sees), the visibility check passes, featurisation
    runs on both worker nodes, and the bucket ends up with every shard they wrote."""
    shared = tmp_path / "shared-workdir"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["ELORA_REMOTE_WORKDIR"] = str(shared)
    r = subprocess.run([sys.executable, "-c", BUCKET_SCRIPT, "s3://runs/multi/run", ",".join(map(str, _free_ports(6)))],
                       env=env, capture_output=True, text=True, timeout=900, cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, (r.stdout + r.stderr)[-4000:]
    res = json.loads(lines[-1][len("RESULT "):])
    assert Path(res["local"]).is_relative_to(shared) and res["checked"]
    manifest = json.loads(s3.get_object(Bucket="runs", Key="multi/run/features/manifest.json")["Body"].read())
    assert set(manifest["samples_per_node"]) == set(res["workers"])
    keys = {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="runs", Prefix="multi/run/features/")
            for o in page.get("Contents", [])}
    local = {f"multi/run/{p.relative_to(res['local']).as_posix()}" for p in (Path(res["local"]) / "features").rglob("*")
             if p.is_file() and not p.name.startswith(".")}
    assert local and local <= keys  # every shard written on any node reached the bucket


def test_a_bucket_run_whose_working_copy_a_node_cannot_see_names_the_fix(tmp_path, monkeypatch):
    """Multi-node + bucket: the visibility check runs on the working copy, and its error names the
    bucket, the working copy and ELORA_REMOTE_WORKDIR."""
    import ray

    from elora_ray import pipeline, raysession
    from elora_ray.config import load_config
    from elora_ray.errors import ConfigError

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"NodeID": "a" * 56, "Alive": True, "NodeManagerAddress": "10.0.0.1"},
                                               {"NodeID": "b" * 56, "Alive": True, "NodeManagerAddress": "10.0.0.2"}])
    monkeypatch.setattr(pipeline, "ensure_ray", lambda cfg: None)
    monkeypatch.setattr(pipeline, "remote_of", lambda out: "s3://runs/exp")
    monkeypatch.setattr(raysession, "probe_nodes", lambda path, token: {"a" * 56: True, "b" * 56: False})
    work = tmp_path / "copy"
    with pytest.raises(ConfigError) as err:
        pipeline._check_storage_once(load_config(None, []), work)
    msg = str(err.value)
    assert msg.startswith("--out s3://runs/exp (its working copy ") and str(work) in msg
    assert "not visible from 1 of 2 Ray nodes: 10.0.0.2 (bbbbbbbb)" in msg and "ELORA_REMOTE_WORKDIR" in msg
    monkeypatch.setattr(raysession, "probe_nodes", lambda path, token: {"a" * 56: True, "b" * 56: True})
    pipeline._check_storage_once(load_config(None, []), work)  # every node sees it: the run goes on
    assert str(work.resolve()) in pipeline._CHECKED
