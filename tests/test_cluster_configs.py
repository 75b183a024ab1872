"""The cluster launch files parse, pass Ray's cluster-config schema, and point at real entrypoints."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
REPO = CLUSTER.parent


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "onprem.yaml"])
def test_ray_up_configs_pass_rays_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((CLUSTER / name).read_text())
    validate_config(prepare_config(cfg))  # raises on schema violations
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def _pod_volumes_match(template: dict) -> None:
    spec = template["spec"]
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{c['name']} mounts undefined volume {m['name']}"
            assert m["mountPath"] == "/shared"


def test_kuberay_manifests_are_consistent():
    cluster, pvc = _docs("kuberay-raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    (job,) = _docs("kuberay-rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        _pod_volumes_match(spec["headGroupSpec"]["template"])
        for g in spec["workerGroupSpecs"]:
            _pod_volumes_match(g["template"])
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["headGroupSpec"]["template"]["spec"]["volumes"]}
        assert claims == {pvc["metadata"]["name"]}
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[0] == "python" and (REPO / entry[1]).is_file()
    assert entry[entry.index("--out") + 1].startswith("/shared/")
    yaml.safe_load(job["spec"]["runtimeEnvYAML"])  # the embedded runtime env is valid YAML too
