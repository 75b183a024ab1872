"""Encoder backbone (e.g. all-MiniLM-L6-v2) + mean/CLS pooling + one linear head per task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .classifier import MultiTaskClassifier, TaskSpec, TokenizeStats


def pooling_mode(model_dir: Path) -> str:
    """``mean`` for sentence-transformers checkpoints that say so, else ``cls``."""
    cfg = model_dir / "1_Pooling" / "config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text())
        if data.get("pooling_mode_mean_tokens"):
            return "mean"
    return "mean" if (model_dir / "modules.json").is_file() else "cls"


class EncoderClassifier(MultiTaskClassifier):
    kind = "encoder"

    def __init__(self, backbone: nn.Module, tokenizer, tasks: Sequence[TaskSpec], max_length: int, pooling: str = "mean") -> None:
        super().__init__(tasks, max_length)
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        hidden = backbone.config.hidden_size
        self.heads = nn.ModuleList(nn.Linear(hidden, len(t.labels)) for t in self.tasks)

    def tokenize(self, tasks, texts, text_pairs=None, stats: TokenizeStats | None = None) -> dict[str, torch.Tensor]:
        pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
        has_pair = [p is not None for p in pairs]
        if any(has_pair) and not all(has_pair):
            # Mixed batches: pair-less samples get an empty second segment.
            pairs = [p if p is not None else "" for p in pairs]
        enc = self.tokenizer(
            list(texts),
            pairs if any(has_pair) else None,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
            return_overflowing_tokens=False,
            return_length=False,
        )
        if stats is not None:
            full = self.tokenizer(list(texts), pairs if any(has_pair) else None, truncation=False)["input_ids"]
            for name, ids in zip(tasks, full):
                if len(ids) > self.max_length:
                    stats.add(name)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "task_index": self.task_ids(tasks),
        }

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def head_logits(self, pooled: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        out = pooled.new_full((pooled.shape[0], self.max_labels), float("-inf"))
        for t in torch.unique(task_index).tolist():
            rows = task_index == t
            head = self.heads[t]
            out[rows, : head.out_features] = head(pooled[rows].to(head.weight.dtype)).to(out.dtype)
        return out

    def forward(self, input_ids, attention_mask, task_index) -> torch.Tensor:
        return self.head_logits(self.pooled(input_ids, attention_mask), task_index)
