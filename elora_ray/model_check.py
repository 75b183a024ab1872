"""Stage — model check: build the model + adapter once, count truncations, sanity-run a batch.

It runs where the model will run: a Ray task holding the featurize actors' resources (their CPUs,
and their GPU share on a GPU cluster), never on the driver, so the head needs no GPU and only
the memory of the tokenizer and the data (an 8B model would otherwise be built, in fp32, on the head).

Writes ``model.json`` into the run directory: model kind and path, adapter type, trainable
parameter counts (adapter and heads), and per task how many samples had their text
truncated to fit ``model.max_length`` (for decoders the ``Answer:`` suffix and label
position are always kept; only the text is cut).
"""

from __future__ import annotations

import logging
import os
import resource
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .adapters import attach_adapter, count_parameters, needs_quantized_base, regularization_loss
from .config import RunConfig
from .io import write_json
from .layout import RunLayout
from .models.build import build_classifier
from .models.classifier import TaskSpec, TokenizeStats
from .models.registry import resolve_model_dir
from .tasks.schema import SPLITS, TaskData

log = logging.getLogger(__name__)


def check_model_on_worker(cfg: RunConfig, run_dir: Path) -> dict:
    """Run :func:`check_model` in a Ray task with the featurize actors' resources; its result."""
    import ray

    from .featurize.stage import actor_resources
    from .raysession import ensure_ray

    ensure_ray(cfg.ray)
    cpus, gpus = actor_resources(cfg)
    remote = ray.remote(_check_model_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    return ray.get(remote.remote(cfg.model_dump(mode="json"), str(run_dir)))


def _check_model_task(cfg_data: dict, run_dir: str) -> dict:
    from .artifacts import read_prepared
    from .models.placement import reserved_gpu_ids, worker_device

    cfg = RunConfig.model_validate(cfg_data)
    torch.set_num_threads(max(1, int(cfg.featurize.cpus_per_actor)))
    device = worker_device(bool(reserved_gpu_ids()), "the model check")
    return check_model(cfg, read_prepared(Path(run_dir)), Path(run_dir), device=device)


def check_model(cfg: RunConfig, tasks: list[TaskData], run_dir: Path, batch_size: int = 256,
                device: str | torch.device = "cpu") -> dict:
    from .models.placement import place_model

    t0 = time.perf_counter()
    specs = [TaskSpec.of(t) for t in tasks]
    quantize = needs_quantized_base(cfg.adapter)
    model = build_classifier(cfg.model, specs, quantize=quantize, quant_type=cfg.adapter.quant_type, seed=cfg.seed,
                             device=device)
    place_model(model, device)
    base_params = sum(p.numel() for p in model.parameters())
    peft_model = attach_adapter(model, cfg.adapter, seed=cfg.seed)
    place_model(peft_model, device)
    stats = TokenizeStats()
    total = {t.name: 0 for t in tasks}
    for t in tqdm(tasks, desc="tokenize (truncation check)", unit="task", leave=False):
        rows = [ex for s in SPLITS for ex in t.splits.get(s, [])]
        total[t.name] = len(rows)
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            model.tokenize([t.name] * len(chunk), [e.text for e in chunk], [e.text_pair for e in chunk], stats)
    # One real forward/backward on a mixed batch (the first sample of up to 8 tasks): the adapter and
    # heads must receive gradients. (It used each sample twice: the same loss at twice the memory.)
    sample = [(t.name, t.splits["train"][0]) for t in tasks[:8]]
    batch = model.tokenize([n for n, _ in sample], [e.text for _, e in sample], [e.text_pair for _, e in sample])
    labels = torch.tensor([tasks[model.task_index[n]].label_id(e.label) for n, e in sample], device=device)
    logits = peft_model(**{k: v.to(device) for k, v in batch.items()})
    loss = torch.nn.functional.cross_entropy(logits, labels)
    reg = regularization_loss(peft_model, cfg.adapter)
    (loss + reg if reg is not None else loss).backward()
    grads = sum(1 for _, p in peft_model.named_parameters() if p.requires_grad and p.grad is not None)
    info = {
        "model": cfg.model.name_or_path,
        "model_dir": str(resolve_model_dir(cfg.model)),
        "kind": model.kind,
        "adapter": cfg.adapter.model_dump(mode="json"),
        "quantized_base": quantize,
        "base_parameters": base_params,
        "adapter_parameters": count_parameters(peft_model),
        "trainable_parameters_with_heads": count_parameters(peft_model, include_heads=True),
        "params_with_gradient": grads,
        "initial_loss": float(loss.detach()),
        "max_length": cfg.model.max_length,
        "truncated": {n: {"count": stats.truncated.get(n, 0), "of": total[n]} for n in total},
        "seconds": round(time.perf_counter() - t0, 2),
        "process": {"pid": os.getpid(), "device": str(device),
                    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024},
    }
    for n, c in info["truncated"].items():
        if c["count"]:
            log.warning(
                "task %s: %d of %d samples exceed model.max_length=%d; their text is truncated%s",
                n, c["count"], c["of"], cfg.model.max_length,
                " (the Answer: suffix and label position are kept)" if model.kind == "decoder" else "",
            )
    write_json(RunLayout(run_dir).model_check, info)
    log.info(
        "model %s (%s, %s): %d adapter params (+heads: %d), initial loss %.4f",
        cfg.model.name_or_path, model.kind, cfg.adapter.type, info["adapter_parameters"],
        info["trainable_parameters_with_heads"], info["initial_loss"],
    )
    return info
