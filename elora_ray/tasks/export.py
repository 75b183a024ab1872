"""Export the embedded suite as ordinary jsonl files + a config that reads them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..config import SuiteConfig
from ..io import atomic_path, write_json, write_text
from .schema import SPLITS
from .suite import generate_suite, planted_groups


def export_suite(cfg: SuiteConfig, out: Path) -> Path:
    tasks = generate_suite(cfg)
    entries = []
    for t in tasks:
        entry = {"name": t.name, "labels": t.labels}
        for split in SPLITS:
            rel = f"{t.name}/{split}.jsonl"
            with atomic_path(out / rel) as tmp:
                with tmp.open("w", encoding="utf-8") as f:
                    for ex in t.splits[split]:
                        f.write(json.dumps({"id": ex.sample_id.rsplit("/", 1)[-1], "text": ex.text, "label": ex.label}) + "\n")
            entry[split] = rel
        entries.append(entry)
    write_json(out / "groups.json", {"planted_groups": planted_groups(cfg)})
    config = {"model": {"name_or_path": "default"}, "adapter": {"type": "lora", "rank": 4}, "tasks": entries, "seed": cfg.seed}
    return write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
