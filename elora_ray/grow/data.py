"""A grow's data side: the new tasks' samples, their features with the run's projection, their probed
heads, and every kept adapter re-indexed to the grown task list.

Nothing about a kept task is recomputed: its prepared samples must read back identical (checked),
its feature shards stay, its probed head keeps its weights (only its index moves past removed
tasks). A new task is prepared, probed (encoders) and featurised alone, with the run's seed,
projection and dimension — the featurize stage sees the kept shards and computes only the missing
ones.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from ..featurize.stage import featurize, features_fingerprint, run_probe
from ..io import atomic_path, write_json, write_parquet
from ..layout import FEATURE_DIR, RunLayout
from ..prepare import data_fingerprint, model_kind, write_run_config
from ..tasks.load import load_tasks
from ..tasks.schema import SPLITS
from .change import TaskChange

log = logging.getLogger(__name__)
HEAD_KEY = re.compile(r"^(?P<prefix>.*\bheads\.)(?P<index>\d+)(?P<suffix>\..+)$")
HEAD_ENTRY = re.compile(r"^(?P<prefix>(.*\.)?heads\.)\d+$")


def load_checked(change: TaskChange, run: Path) -> dict:
    """Every task of the grown list, read as ``prepare`` reads it; the kept tasks must read back exactly
    the samples ``run`` holds (checked before a grow writes anything)."""
    layout = RunLayout(run)
    cfg = change.cfg
    tasks = {t.name: t for t in load_tasks(cfg, model_kind(cfg))}
    for name in change.kept:
        for split in SPLITS:
            path = layout.data_split(name, split)
            table = tasks[name].to_table(split)
            if not path.is_file() or not pq.read_table(path).equals(table):
                raise ConfigError(f"task {name!r}: its {split} samples read now differ from {path}, which the run was "
                                  "trained on (its files or settings changed); a grow keeps the kept tasks' data as it was. "
                                  "Start a new run (`elora run`) instead")
    return tasks


def prepare_change(change: TaskChange, run: Path) -> dict:
    """Write the added tasks' samples, drop the removed ones' and write the grown manifest and config.
    Returns the manifest."""
    layout = RunLayout(run)
    cfg = change.cfg
    tasks = load_checked(change, run)
    for name in change.added:
        for split in SPLITS:
            write_parquet(layout.data_split(name, split), tasks[name].to_table(split))
    for name in change.removed:
        shutil.rmtree(layout.root / "data" / name, ignore_errors=True)
    fp = data_fingerprint(cfg)
    manifest = {"fingerprint": fp, "inputs": fp, "tasks": {
        n: {"labels": tasks[n].labels, "verbalizer": tasks[n].verbalizer, "sizes": tasks[n].sizes(),
            "sources": tasks[n].sources, "notes": tasks[n].notes} for n in change.new_names}}
    write_json(layout.data_manifest, manifest)
    write_run_config(cfg, run)
    for name in change.added:
        log.info("grow: task %-20s %s labels=%s", name, tasks[name].sizes(), tasks[name].labels)
    return manifest


def regrow_heads(change: TaskChange, run: Path, progress: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Encoders: probe the added tasks' heads and write ``features/heads.safetensors`` in the grown
    order (kept heads unchanged). Returns the added tasks' heads by name ({} for decoders)."""
    from ..artifacts import read_prepared

    feat = run / FEATURE_DIR
    path = feat / "heads.safetensors"
    if not path.is_file():
        return {}
    done = json.loads((feat / "probe.json").read_text()) if (feat / "probe.json").is_file() else {"tasks": {}}
    old = load_file(str(path))
    if len(old) == 2 * len(change.new_names) and all(n in done["tasks"] for n in change.new_names) \
            and not set(done["tasks"]) - set(change.new_names):  # written by an earlier, interrupted grow
        return {n: (old[f"{i}.weight"], old[f"{i}.bias"]) for i, n in enumerate(change.new_names) if n in change.added}
    added: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    info = dict(done["tasks"])
    if change.added:
        scratch = run / "grow" / "probe"
        tasks = {t.name: t for t in read_prepared(run)}
        probe = run_probe(change.cfg, [tasks[n] for n in change.added], scratch, progress)
        new = load_file(str(scratch / "heads.safetensors"))
        added = {n: (new[f"{k}.weight"], new[f"{k}.bias"]) for k, n in enumerate(change.added)}
        info.update(probe["tasks"])
        shutil.rmtree(scratch, ignore_errors=True)
    state: dict[str, torch.Tensor] = {}
    for i, name in enumerate(change.new_names):
        w, b = added[name] if name in added else (old[f"{change.old_names.index(name)}.weight"], old[f"{change.old_names.index(name)}.bias"])
        state[f"{i}.weight"], state[f"{i}.bias"] = w.contiguous(), b.contiguous()
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
    write_json(feat / "probe.json", {**done, "tasks": {n: info[n] for n in change.new_names if n in info}})
    return added


def featurize_added(change: TaskChange, run: Path, progress: bool = True) -> dict:
    """Drop the removed tasks' shards and featurise the added tasks' samples alone (same projection)."""
    layout = RunLayout(run)
    feat = run / FEATURE_DIR
    for split_dir in [p for p in feat.iterdir() if p.is_dir()]:
        for name in change.removed:
            shutil.rmtree(split_dir / name, ignore_errors=True)
    state_path = feat / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    fp = features_fingerprint(change.cfg, json.loads(layout.data_manifest.read_text())["fingerprint"])
    if state.get("fingerprint") != fp:  # the kept shards are valid for the grown task list: keep them
        layout.features_manifest.unlink(missing_ok=True)
        write_json(state_path, {**state, "fingerprint": fp})
    t0 = time.perf_counter()
    manifest = featurize(change.cfg, run, progress=progress)
    log.info("grow: featurised %s in %.1f s (the kept tasks' shards reused)", ", ".join(change.added) or "nothing new",
             time.perf_counter() - t0)
    return manifest


def retask_adapter(directory: Path, change: TaskChange, added_heads: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   specs: list[dict]) -> None:
    """Rewrite a saved adapter for the grown task list: head i of the grown order is the kept task's
    own trained head, or an added task's probed head; the adapter's task list follows."""
    meta_path = directory / "elora_adapter.json"
    meta = json.loads(meta_path.read_text())
    if [t["name"] for t in meta.get("tasks", [])] == change.new_names:
        return  # already rewritten (a resumed grow)
    weights = directory / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    heads: dict[int, dict[str, torch.Tensor]] = {}
    prefix = None
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        m = HEAD_KEY.match(key)
        if m is None:
            out[key] = value
            continue
        prefix = m["prefix"]
        heads.setdefault(int(m["index"]), {})[m["suffix"]] = value
    if heads:
        for i, name in enumerate(change.new_names):
            if name in change.added:
                if name not in added_heads:
                    raise ConfigError(f"{directory}: no probed head for the added task {name!r}")
                w, b = added_heads[name]
                part = {".weight": w, ".bias": b}
            else:
                part = heads[change.old_names.index(name)]
            for suffix, value in part.items():
                out[f"{prefix}{i}{suffix}"] = value.contiguous()
    with atomic_path(weights) as tmp:
        save_file(out, str(tmp))
    config_path = directory / "adapter_config.json"
    config = json.loads(config_path.read_text())
    saved = config.get("modules_to_save") or []
    if any(HEAD_ENTRY.match(str(e)) for e in saved):  # PEFT keeps one trainable copy per listed head
        prefix = next(HEAD_ENTRY.match(str(e))["prefix"] for e in saved if HEAD_ENTRY.match(str(e)))
        config["modules_to_save"] = [e for e in saved if not HEAD_ENTRY.match(str(e))] + [
            f"{prefix}{i}" for i in range(len(change.new_names))]
        write_json(config_path, config)
    write_json(meta_path, {**meta, "tasks": specs})
