"""Encoder backbone (e.g. all-MiniLM-L6-v2) + mean/CLS pooling + one linear head per task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .classifier import MultiTaskClassifier, TaskSpec, TokenizeStats, head_logits_fp32


def pooling_mode(model_dir: Path) -> str:
    """``mean`` for sentence-transformers checkpoints that say so, else ``cls``."""
    cfg = model_dir / "1_Pooling" / "config.json"
    if cfg.is_file():
        data = json.loads(cfg.read_text())
        if data.get("pooling_mode_mean_tokens"):
            return "mean"
    return "mean" if (model_dir / "modules.json").is_file() else "cls"


def encoder_too_long(tokenizer, texts: Sequence[str], pairs: Sequence[str | None], max_length: int) -> list[bool]:
    """Whether each sample (text, or text + pair, with special tokens) exceeds ``max_length`` tokens
    and gets truncated. Needs only the tokenizer."""
    out = [False] * len(texts)
    for with_pair in (False, True):
        rows = [i for i, p in enumerate(pairs) if (p is not None) == with_pair]
        if rows:
            full = tokenizer([texts[i] for i in rows], [pairs[i] for i in rows] if with_pair else None,
                             truncation=False)["input_ids"]
            for j, i in enumerate(rows):
                out[i] = len(full[j]) > max_length
    return out


class EncoderClassifier(MultiTaskClassifier):
    kind = "encoder"

    def __init__(self, backbone: nn.Module, tokenizer, tasks: Sequence[TaskSpec], max_length: int, pooling: str = "mean") -> None:
        super().__init__(tasks, max_length)
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        hidden = backbone.config.hidden_size
        self.heads = nn.ModuleList(nn.Linear(hidden, len(t.labels)) for t in self.tasks)
        self.uses_token_types = getattr(backbone.config, "type_vocab_size", 0) > 1

    def tokenize(self, tasks, texts, text_pairs=None, stats: TokenizeStats | None = None) -> dict[str, torch.Tensor]:
        """Token ids padded to the longest sample. A sample's ids never depend on the batch:
        samples with and without a text pair are encoded separately, then padded together."""
        texts = list(texts)
        pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
        ids: list[list[int]] = [[] for _ in texts]
        types: list[list[int]] = [[] for _ in texts]
        for with_pair in (False, True):
            rows = [i for i, p in enumerate(pairs) if (p is not None) == with_pair]
            if not rows:
                continue
            enc = self.tokenizer(
                [texts[i] for i in rows],
                [pairs[i] for i in rows] if with_pair else None,
                truncation=True,
                max_length=self.max_length,
            )
            for j, i in enumerate(rows):
                ids[i] = enc["input_ids"][j]
                types[i] = enc["token_type_ids"][j] if "token_type_ids" in enc else [0] * len(ids[i])
        if stats is not None:
            for name, cut in zip(tasks, encoder_too_long(self.tokenizer, texts, pairs, self.max_length)):
                if cut:
                    stats.add(name)
        width = max(len(r) for r in ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        token_type = torch.zeros((len(ids), width), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, r in enumerate(ids):
            input_ids[i, : len(r)] = torch.tensor(r)
            token_type[i, : len(r)] = torch.tensor(types[i])
            mask[i, : len(r)] = 1
        out = {"input_ids": input_ids, "attention_mask": mask, "task_index": self.task_ids(tasks)}
        if self.uses_token_types:
            out["token_type_ids"] = token_type
        return out

    def pooled(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        kw = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    static_graph: bool = False
    """True: every head runs on every batch, in task order, so the autograd graph (and the order
    in which gradients become ready) does not depend on which tasks a batch holds. DeepSpeed's
    ZeRO-2 gradient buckets need that to match across ranks; the logits are the same."""

    def head_logits(self, pooled: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        out = pooled.new_full((pooled.shape[0], self.max_labels), float("-inf"), dtype=torch.float32)
        tasks = range(len(self.heads)) if self.static_graph else torch.unique(task_index).tolist()
        for t in tasks:
            rows = task_index == t
            head = self.heads[t]
            out[rows, : head.out_features] = head_logits_fp32(head, pooled[rows]).to(out.dtype)
        return out

    def forward(self, input_ids, attention_mask, task_index, token_type_ids=None) -> torch.Tensor:
        return self.head_logits(self.pooled(input_ids, attention_mask, token_type_ids), task_index)
