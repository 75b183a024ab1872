"""What a served run is: its tasks and labels, groups, model, adapters and a fingerprint.

Read from the run's small JSON files (no torch, no model): the ingress uses it to check requests
and to answer ``GET /metadata`` and ``GET /tasks``.

The *run fingerprint* changes whenever a served prediction could: it hashes the prepared data's
fingerprint (``data/manifest.json``), the ensemble members and combination weights
(``ensemble/members.json``, ``ensemble/weights.json``), the bytes of every adapter the ensemble
uses and of the probed task heads, and the model section of ``config.yaml``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from ..layout import RunLayout


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {what}")
    return path


def _file_digest(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def read_metadata(run_dir: str | Path) -> dict:
    """The run's metadata as served by ``GET /metadata`` (raises FileNotFoundError naming the missing
    artifact when ``run_dir`` is not a finished run)."""
    layout = RunLayout(Path(run_dir).resolve())
    _need(layout.config, "not an elora run directory")
    manifest = json.loads(_need(layout.data_manifest, "the run has no prepared data (run `elora run`)").read_text())
    members = json.loads(_need(layout.members, "the run has no ensemble (run `elora train`)").read_text())
    weights_text = _need(layout.weights, "the run has no combination weights (run `elora combine`)").read_text()
    weights = json.loads(weights_text)
    cfg = yaml.safe_load(layout.config.read_text()) or {}
    model_check = json.loads(layout.model_check.read_text()) if layout.model_check.is_file() else {}

    groups = members["groups"]
    reference = members.get("reference")
    adapters = list(dict.fromkeys(
        [j for g in groups for j in [g["base"]] + [lr["job_id"] for lr in g.get("learners", [])]]
        + ([reference] if any(g.get("learners") for g in groups) and reference else [])))

    h = hashlib.sha256()
    h.update(str(manifest.get("fingerprint", "")).encode())
    h.update(json.dumps(members, sort_keys=True).encode())
    h.update(weights_text.encode())
    h.update(json.dumps(cfg.get("model", {}), sort_keys=True).encode())
    for a in adapters:
        h.update(a.encode())
        f = layout.adapter(a) / "adapter_model.safetensors"
        if f.is_file():
            _file_digest(h, f)
    if layout.heads.is_file():
        _file_digest(h, layout.heads)

    task_weights = weights.get("tasks", {})
    tasks = {}
    for name, meta in manifest["tasks"].items():
        group = next((j for j, g in enumerate(groups) if name in g["tasks"]), None)
        tasks[name] = {"labels": list(meta["labels"]), "group": group,
                       "weights": task_weights.get(name, {}).get("weights")}
    adapter_cfg = cfg.get("adapter", {})
    return {
        "run": str(layout.root),
        "fingerprint": h.hexdigest()[:16],
        "data_fingerprint": manifest.get("fingerprint"),
        "ensemble_fingerprint": members.get("fingerprint"),
        "model": {"name_or_path": cfg.get("model", {}).get("name_or_path"), "kind": model_check.get("kind"),
                  "max_length": model_check.get("max_length", cfg.get("model", {}).get("max_length")),
                  "base_parameters": model_check.get("base_parameters")},
        "adapter": {"type": adapter_cfg.get("type"), "rank": adapter_cfg.get("rank")},
        "weights_method": weights.get("method"),
        "tasks": tasks,
        "groups": [{"tasks": g["tasks"], "base": g["base"],
                    "learners": [{"job_id": lr["job_id"], "coef": lr["coef"]} for lr in g.get("learners", [])]}
                   for g in groups],
        "adapters": adapters,
    }
