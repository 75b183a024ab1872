"""One interface over encoder and decoder models: class logits per sample for its own task.

``MultiTaskClassifier.tokenize`` turns mixed-task examples into a batch; ``forward`` returns
logits of shape [batch, max_labels] where the columns beyond a task's label count are -inf, so
``log_softmax`` / ``cross_entropy`` work on mixed-task batches directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..tasks.schema import TaskData


@dataclass(frozen=True)
class TaskSpec:
    """What a model needs to know of a task: its name, ordered labels and verbalizer."""

    name: str
    labels: tuple[str, ...]
    verbalizer: dict[str, str] | None = None

    @classmethod
    def of(cls, task: TaskData) -> "TaskSpec":
        return cls(task.name, tuple(task.labels), task.verbalizer)

    def words(self) -> list[str]:
        v = self.verbalizer or {}
        return [v.get(lab, lab) for lab in self.labels]


@dataclass
class TokenizeStats:
    """Counts reported to the user: how many samples had their text truncated."""

    truncated: dict[str, int] = field(default_factory=dict)

    def add(self, task: str, n: int = 1) -> None:
        self.truncated[task] = self.truncated.get(task, 0) + n


def head_logits_fp32(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A task head's class logits, computed outside any autocast in the head's own dtype (fp32 unless a bf16
    engine cast the weights), returned as fp32.

    Under bf16 autocast a head's output would be bf16, which rounds a logit near 10 to a step of 1/16: two labels'
    logits then tie exactly on about 1% of a decoder's predictions (argmax always picks the first label), and the
    log-odds the features start from carry that rounding. A head is a few hundred multiply-adds per label, so
    running it in fp32 costs nothing measurable. ``head`` may be PEFT's wrapper of a trained copy."""
    dtype = next(head.parameters()).dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        return head(x.to(dtype)).float()


class MultiTaskClassifier(nn.Module):
    kind: str = "base"

    def __init__(self, tasks: Sequence[TaskSpec], max_length: int) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a classifier needs at least one task")
        self.tasks = list(tasks)
        self.task_index = {t.name: i for i, t in enumerate(self.tasks)}
        self.max_length = max_length
        self.max_labels = max(len(t.labels) for t in self.tasks)
        valid = torch.zeros(len(self.tasks), self.max_labels, dtype=torch.bool)
        for i, t in enumerate(self.tasks):
            valid[i, : len(t.labels)] = True
        self.register_buffer("label_valid", valid, persistent=False)

    def task_ids(self, names: Sequence[str]) -> torch.Tensor:
        try:
            return torch.tensor([self.task_index[n] for n in names], dtype=torch.long)
        except KeyError as exc:
            raise KeyError(f"task {exc.args[0]!r} is not one of this model's tasks") from None

    def mask_invalid(self, logits: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        valid = self.label_valid.to(logits.device)[task_index]
        return logits.masked_fill(~valid, float("-inf"))

    def tokenize(
        self,
        tasks: Sequence[str],
        texts: Sequence[str],
        text_pairs: Sequence[str | None] | None = None,
        stats: TokenizeStats | None = None,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
