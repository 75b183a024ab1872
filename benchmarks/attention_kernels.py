"""Which attention a bf16 forward should use on a CPU: PyTorch's fused ("flash") CPU kernel, which transformers'
``sdpa`` implementation calls, or transformers' plain ("eager") implementation. The choice behind
:data:`elora_ray.models.precision.PLAIN_ATTENTION_MAX_SCORES`.

PyTorch picks its fused attention kernel on CPUs; in bf16 its backward is slow at the short sequences our tasks
have. For each model and batch shape, in one process with ``--threads`` torch threads (1: what one training job
or featurize actor gets on a 2-core machine), a LoRA training step (forward under
:func:`elora_ray.models.precision.autocast`, cross-entropy, backward, AdamW step) and a forward alone are timed
for

* ``fp32``: no autocast (the CPU default);
* ``bf16 fused``: bf16 autocast, the fused kernel (what every bf16 CPU forward ran before);
* ``bf16 plain``: bf16 autocast with eager attention (``autocast(..., attention_scores=B·L², model)``, which switches
  the model's attention for the forward when B·L² is within the bound).

Settings alternate round by round (``--rounds``), so a machine's load drifts into all of them alike; a row gives the
median ms per step over rounds and the ratio to ``bf16 fused``. ``loss Δ`` is the largest difference of the first
batch's loss between the two bf16 kernels (the same weights and batch: only the kernel differs).

    python benchmarks/attention_kernels.py              # MiniLM (16, 64, 128 tokens) and SmolLM2 (64 tokens), ~6 min
    python benchmarks/attention_kernels.py --quick      # tiny random models (not a result)

Writes ``benchmarks/results/attention_kernels[_quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import machine_info, write_results  # noqa: E402,I001

SETTINGS = ("fp32", "bf16 fused", "bf16 plain")
FULL = [("default", 16, 16), ("default", 16, 64), ("default", 16, 128), ("smollm2", 16, 64)]
QUICK = [("tiny-bert", 8, 16), ("tiny-llama", 8, 16)]


def build(name: str):
    """(peft model, kind) of ``name`` as the pipeline resolves it, LoRA r=4 on the attention's query and value."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoModelForCausalLM

    from elora_ray.config import load_config
    from elora_ray.models.registry import detect_kind, load_hf_config, resolve_model_dir

    cfg = load_config(None, [f"model.name_or_path={name}"]).model
    path = resolve_model_dir(cfg)
    kind = detect_kind(load_hf_config(path, False), "auto")
    torch.manual_seed(0)
    if kind == "decoder":
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        targets = ["q_proj", "v_proj"]
    else:
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        targets = ["query", "value"]
    model.requires_grad_(False)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets)), kind


def measure(name: str, batch: int, length: int, rounds: int, steps: int) -> dict:
    import numpy as np
    import torch

    from elora_ray.models.precision import attention_scores, autocast

    model, kind = build(name)
    hidden = model.base_model.model.config.hidden_size
    head = torch.nn.Linear(hidden, 2)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    vocab = model.base_model.model.config.vocab_size
    enc = {"input_ids": torch.randint(5, min(vocab, 20000), (batch, length), generator=gen),
           "attention_mask": torch.ones(batch, length, dtype=torch.long)}
    labels = torch.randint(0, 2, (batch,), generator=gen)

    def features():
        if kind == "decoder":
            return model.base_model.model.model(**enc).last_hidden_state[:, -1]
        return model(**enc).last_hidden_state.mean(1)

    def context(setting: str):
        if setting == "fp32":
            return autocast("fp32", "cpu")
        return autocast("bf16", "cpu", attention_scores(enc) if setting == "bf16 plain" else None, model)

    def loss_of(setting: str):
        with context(setting):
            h = features()
        return torch.nn.functional.cross_entropy(head(h.float()), labels)

    def train_step(setting: str) -> None:
        opt.zero_grad(set_to_none=True)
        loss_of(setting).backward()
        opt.step()

    @torch.no_grad()
    def forward(setting: str) -> None:
        loss_of(setting)

    with torch.no_grad():
        delta = abs(float(loss_of("bf16 fused")) - float(loss_of("bf16 plain")))
    times = {(s, what): [] for s in SETTINGS for what in ("train", "forward")}
    for s in SETTINGS:  # warm-up
        train_step(s)
        forward(s)
    for _ in range(rounds):
        for s in SETTINGS:
            for what, fn in (("train", train_step), ("forward", forward)):
                t0 = time.perf_counter()
                for _ in range(steps):
                    fn(s)
                times[(s, what)].append((time.perf_counter() - t0) / steps * 1000.0)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for s in SETTINGS:
        rows.append({"setting": s, "train_ms": round(med[(s, "train")], 1), "forward_ms": round(med[(s, "forward")], 1),
                     "train_vs_fused": round(med[(s, "train")] / med[("bf16 fused", "train")], 3),
                     "forward_vs_fused": round(med[(s, "forward")] / med[("bf16 fused", "forward")], 3),
                     "train_ms_all": [round(x, 1) for x in times[(s, "train")]]})
    return {"model": name, "kind": kind, "batch": batch, "length": length, "scores": batch * length**2,
            "bf16_loss_delta": delta, "rows": rows, "rounds": rounds, "steps_per_round": steps,
            "mean_abs_param": float(np.mean([p.detach().abs().mean().item() for p in params]))}


def markdown(data: dict) -> str:
    lines = ["# Attention kernel of bf16 forwards on a CPU: fused vs plain", "",
             "ms per LoRA training step (forward, loss, backward, AdamW) and per forward alone, median over "
             f"{data['cases'][0]['rounds'] if data['cases'] else 0} alternating rounds, {data['threads']} torch "
             "thread(s); ratios to `bf16 fused` (below 1: faster). `loss Δ`: the two bf16 kernels' loss on the same "
             "batch.", "",
             "| model | batch × tokens | setting | train ms | vs fused | forward ms | vs fused | loss Δ |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for c in data["cases"]:
        for r in c["rows"]:
            lines.append(f"| {c['model']} | {c['batch']} × {c['length']} | {r['setting']} | {r['train_ms']} | "
                         f"{r['train_vs_fused']:.2f} | {r['forward_ms']} | {r['forward_vs_fused']:.2f} | "
                         f"{c['bf16_loss_delta']:.1e} |")
    m = data["machine"]
    lines += ["", f"Machine: {m.get('cpu', '?')} ({m.get('cores', '?')} cores), {m.get('date', '')}. "
              f"{data['note']} Command: `{data['command']}`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="steps per setting and round (default by model)")
    ap.add_argument("--note", default="", help="a line for the results (e.g. what else ran)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cases = []
    for name, batch, length in (QUICK if args.quick else FULL):
        steps = args.steps or (2 if name == "smollm2" else 6)
        print(f"{name} {batch}x{length} ...", flush=True)
        cases.append(measure(name, batch, length, 2 if args.quick else args.rounds, steps))
        for r in cases[-1]["rows"]:
            print(f"  {r['setting']:11s} train {r['train_ms']:8.1f} ms ({r['train_vs_fused']:.2f})  "
                  f"forward {r['forward_ms']:8.1f} ms ({r['forward_vs_fused']:.2f})", flush=True)
    data = {"cases": cases, "threads": args.threads, "machine": machine_info(), "note": args.note,
            "command": "python benchmarks/attention_kernels.py" + (" --quick" if args.quick else "")}
    path = write_results("attention_kernels" + ("_quick" if args.quick else ""), data, markdown(data))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
