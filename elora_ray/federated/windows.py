"""The federated data: clients (roles of a play, cut into chunks) and their token windows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..config import RunConfig
from ..errors import ConfigError
from ..io import write_json, write_parquet
from .clients import Client, load_clients, select_clients, text_clients, windows_table

log = logging.getLogger(__name__)


def _source(cfg: RunConfig) -> Path:
    return Path(cfg.federated.source) if cfg.federated.source else cfg.resolved_data_root() / "shakespeare" / "tinyshakespeare.txt"


def _require_decoder(cfg: RunConfig) -> None:
    from ..models.registry import detect_kind, load_hf_config, resolve_model_dir

    path = resolve_model_dir(cfg.model)
    if detect_kind(load_hf_config(path, cfg.model.trust_remote_code), cfg.model.kind) != "decoder":
        raise ConfigError(
            f"model.name_or_path={cfg.model.name_or_path!r} is an encoder; federated next-token training needs a "
            "causal LM: --set model.name_or_path=smollm2 (or tiny-llama), or --config benchmarks/configs/federated_shakespeare_smollm2.yaml")


def all_clients(cfg: RunConfig) -> list[Client]:
    """The play's clients (``include_play``), then each ``federated.sources`` entry's."""
    from ..tasks.load import load_task

    f = cfg.federated
    clients = load_clients(f, _source(cfg)) if f.include_play else []
    for task in f.sources:
        data = load_task(task, cfg.splits, cfg.resolved_data_root())
        texts = [e.text + (f"\n{e.text_pair}" if e.text_pair else "") for e in data.splits.get("train", [])]
        clients += text_clients(task.name, texts, f.client_chars, f.min_client_chars)
    names = [c.name for c in clients]
    if len(set(names)) != len(names):
        clash = sorted({n for n in names if names.count(n) > 1})[:3]
        raise ConfigError(f"federated.sources: client names {clash} occur twice; rename the source (names are "
                          "<source>#<k> and <role>#<k>)")
    if not clients:
        raise ConfigError("federated: no clients: include_play is false and federated.sources is empty")
    return clients


def prepare_windows(cfg: RunConfig, fed: Path) -> dict:
    """Clients and their token windows (``windows.parquet``, ``clients.json``); reused when present."""
    meta_path = fed / "clients.json"
    if (fed / "windows.parquet").is_file() and meta_path.is_file():
        return json.loads(meta_path.read_text())
    from transformers import AutoTokenizer

    from ..models.registry import resolve_model_dir

    source = _source(cfg)
    tok = AutoTokenizer.from_pretrained(str(resolve_model_dir(cfg.model)), local_files_only=True)
    tok.model_max_length = 10**9  # we tokenise whole clients, then cut windows
    clients, dropped = select_clients(all_clients(cfg), tok, cfg.federated,
                                      str(source) if cfg.federated.include_play else "federated.sources")
    table, counts = windows_table(clients, tok, cfg.federated)
    write_parquet(fed / "windows.parquet", table)
    roles = sorted({c.role for c in clients})
    meta = {"source": str(source) if cfg.federated.include_play else None,
            "sources": [t.name for t in cfg.federated.sources], "source_of": {c.name: c.origin for c in clients},
            "clients": [c.name for c in clients], "num_clients": len(clients), "roles": len(roles),
            "windows": {s: int(sum(v[s] for v in counts.values())) for s in ("train", "validation", "test")},
            "dropped_without_windows": dropped, "per_client": counts}
    write_json(meta_path, meta)
    origins: dict[str, int] = {}
    for c in clients:
        origins[c.origin] = origins.get(c.origin, 0) + 1
    where = ", ".join(f"{source.name if o == 'play' else o} {k}" for o, k in origins.items())
    log.info("federated: %d clients (%s; %d roles/sources); windows train %d / validation %d / test %d",
             len(clients), where, len(roles), meta["windows"]["train"], meta["windows"]["validation"],
             meta["windows"]["test"])
    return meta
