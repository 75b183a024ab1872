"""FLOP counting sees 4-bit layers: a QLoRA step costs about what the same LoRA step costs."""

from __future__ import annotations

import pytest

from elora_ray.config import load_config
from elora_ray.featurize.model_at_init import build_model_at_init
from elora_ray.models.classifier import TaskSpec
from elora_ray.models.flops import FlopCounter
from elora_ray.tasks.load import load_tasks


def _step_flops(adapter_type: str) -> float:
    cfg = load_config(None, ["model.name_or_path=tiny-bert", "suite.samples_per_task=40", "suite.tasks_per_group=[1]",
                             f"adapter.type={adapter_type}"])
    tasks = load_tasks(cfg)
    peft_model, model = build_model_at_init(cfg, [TaskSpec.of(t) for t in tasks], train_heads=True)
    t = tasks[0]
    rows = t.splits["train"][:4]
    enc = model.tokenize([t.name] * 4, [e.text for e in rows], [e.text_pair for e in rows])
    peft_model.train()
    with FlopCounter(peft_model) as c:
        peft_model(**enc)[:, : len(t.labels)].logsumexp(-1).sum().backward()
    return c.total


def test_quantized_model_flops_match_the_dense_model():
    dense, quant = _step_flops("lora"), _step_flops("qlora")
    assert quant == pytest.approx(dense, rel=0.02)
