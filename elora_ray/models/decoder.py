"""Causal LM scoring verbalized labels: logits of each label's first token after the prompt.

Prompt: ``{text}\\n{text_pair}\\nAnswer:``; the next token is scored over the task's label
words (with a leading space). Long inputs are truncated *inside the text fields*, never the
``Answer:`` suffix, so the label position always survives; truncations are counted per task.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ModelError
from .classifier import MultiTaskClassifier, TaskSpec, TokenizeStats

ANSWER_SUFFIX = "\nAnswer:"


def verbalizer_first_tokens(tokenizer, tasks: Sequence[TaskSpec]) -> list[list[int]]:
    """Per task, the first token of each label word (``" " + word``: the word follows ``Answer:``).

    Needs only the tokenizer (``elora validate`` runs it without loading weights). Raises
    :class:`ModelError` when a word tokenizes to nothing or two words of a task share a first token
    (the model could not tell those labels apart)."""
    out = []
    for t in tasks:
        first = []
        for word in t.words():
            toks = tokenizer.encode(" " + word, add_special_tokens=False)
            if not toks:
                raise ModelError(f"task '{t.name}': verbalizer word {word!r} tokenizes to nothing")
            first.append(toks[0])
        if len(set(first)) != len(first):
            dup = next(f for f in first if first.count(f) > 1)
            piece = tokenizer.convert_ids_to_tokens([dup])[0] if hasattr(tokenizer, "convert_ids_to_tokens") else dup
            raise ModelError(
                f"task '{t.name}': verbalizer words {t.words()} share a first token ({piece!r}), so the model "
                "cannot tell their labels apart; set tasks[].verbalizer to words that start differently, "
                'quoted in YAML, e.g. verbalizer: {"0": "no", "1": "yes"}'
            )
        out.append(first)
    return out


class DecoderPrompt:
    """The prompt ``{text}\\n{text_pair}\\nAnswer:`` as token ids, cut to ``max_length`` inside the
    text fields. Needs only the tokenizer."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.suffix_ids = tokenizer.encode(ANSWER_SUFFIX, add_special_tokens=False)
        self.newline_ids = tokenizer.encode("\n", add_special_tokens=False)
        bos = getattr(tokenizer, "bos_token_id", None)
        self.prefix_ids = [bos] if bos is not None and getattr(tokenizer, "add_bos_token", False) else []
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        budget = max_length - len(self.suffix_ids) - len(self.prefix_ids)
        if budget < 4:
            raise ModelError(f"model.max_length={max_length} leaves no room for text before '{ANSWER_SUFFIX.strip()}'")
        self.text_budget = budget

    def _budget(self, b: list[int]) -> int:
        return self.text_budget - (len(self.newline_ids) if b else 0)

    def prompt_ids(self, text: str, pair: str | None) -> tuple[list[int], bool]:
        """Token ids of the prompt and whether the text had to be truncated."""
        a = self.tokenizer.encode(text, add_special_tokens=False)
        b = self.tokenizer.encode(pair, add_special_tokens=False) if pair else []
        sep = self.newline_ids if b else []
        budget = self._budget(b)
        truncated = len(a) + len(b) > budget
        while len(a) + len(b) > budget:  # longest-first, like HF's pair truncation
            if len(a) >= len(b):
                a = a[: max(0, min(len(a) - 1, budget - len(b)))] if len(b) < budget else a[:-1]
            else:
                b = b[: max(0, min(len(b) - 1, budget - len(a)))] if len(a) < budget else b[:-1]
        return self.prefix_ids + a + sep + b + self.suffix_ids, truncated

    def too_long(self, texts: Sequence[str], pairs: Sequence[str | None]) -> list[bool]:
        """Whether each prompt gets truncated (what :meth:`prompt_ids` says, in one batched call)."""
        enc = lambda xs: self.tokenizer(list(xs), add_special_tokens=False)["input_ids"] if xs else []  # noqa: E731
        a = enc(texts)
        with_pair = [i for i, p in enumerate(pairs) if p]
        b: list[list[int]] = [[] for _ in texts]
        for i, ids in zip(with_pair, enc([pairs[i] for i in with_pair])):
            b[i] = ids
        return [len(x) + len(y) > self._budget(y) for x, y in zip(a, b)]


class DecoderClassifier(MultiTaskClassifier):
    kind = "decoder"

    def __init__(self, lm: nn.Module, tokenizer, tasks: Sequence[TaskSpec], max_length: int) -> None:
        super().__init__(tasks, max_length)
        self.lm = lm
        self.tokenizer = tokenizer
        ids = torch.zeros(len(self.tasks), self.max_labels, dtype=torch.long)
        for i, first in enumerate(verbalizer_first_tokens(tokenizer, self.tasks)):
            ids[i, : len(first)] = torch.tensor(first)
        self.register_buffer("label_token_ids", ids, persistent=False)
        self.prompt = DecoderPrompt(tokenizer, max_length)
        self.suffix_ids, self.newline_ids = self.prompt.suffix_ids, self.prompt.newline_ids
        self.prefix_ids, self.pad_id = self.prompt.prefix_ids, self.prompt.pad_id
        self.text_budget = self.prompt.text_budget

    def prompt_ids(self, text: str, pair: str | None) -> tuple[list[int], bool]:
        """Token ids of the prompt and whether the text had to be truncated."""
        return self.prompt.prompt_ids(text, pair)

    def tokenize(self, tasks, texts, text_pairs=None, stats: TokenizeStats | None = None) -> dict[str, torch.Tensor]:
        pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
        rows = []
        for name, text, pair in zip(tasks, texts, pairs):
            ids, cut = self.prompt_ids(text, pair)
            if cut and stats is not None:
                stats.add(name)
            rows.append(ids)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # right padding; we read the last real position
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "task_index": self.task_ids(tasks)}

    def last_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(self, input_ids, attention_mask, task_index) -> torch.Tensor:
        h = self.last_hidden(input_ids, attention_mask)
        head = self.lm.lm_head
        ids = self.label_token_ids.to(h.device)[task_index]
        if type(head) is nn.Linear:  # only the label tokens' rows, in fp32 (see classifier.head_logits_fp32)
            with torch.autocast(device_type=h.device.type, enabled=False):
                logits = torch.einsum("bh,blh->bl", h.float(), head.weight[ids].float())
                if head.bias is not None:
                    logits = logits + head.bias[ids].float()
        else:  # a wrapped or quantised head: its own forward over the vocabulary
            vocab_logits = head(h.to(head.weight.dtype) if hasattr(head, "weight") else h)
            logits = vocab_logits.gather(1, ids).float()
        return self.mask_invalid(logits, task_index)
