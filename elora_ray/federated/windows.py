"""The federated data: clients (roles of a play, cut into chunks) and their token windows."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..config import RunConfig
from ..errors import ConfigError
from ..io import write_json, write_parquet
from .clients import load_clients, select_clients, windows_table

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
    clients, dropped = select_clients(load_clients(cfg.federated, source), tok, cfg.federated, str(source))
    table, counts = windows_table(clients, tok, cfg.federated)
    write_parquet(fed / "windows.parquet", table)
    roles = sorted({c.role for c in clients})
    meta = {"source": str(source), "clients": [c.name for c in clients], "num_clients": len(clients), "roles": len(roles),
            "windows": {s: int(sum(v[s] for v in counts.values())) for s in ("train", "validation", "test")},
            "dropped_without_windows": dropped, "per_client": counts}
    write_json(meta_path, meta)
    log.info("federated: %d clients from %d roles in %s; windows train %d / validation %d / test %d",
             len(clients), len(roles), source.name, meta["windows"]["train"], meta["windows"]["validation"],
             meta["windows"]["test"])
    return meta
