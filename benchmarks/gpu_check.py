"""GPU check: featurisation speed and exactness, and bf16 adapter training, on one GPU with no internet.

Self-contained: builds randomly initialised models from a config (a Llama-3.2-1B-shaped decoder and a
MiniLM-shaped encoder; no download, no packaged weights), adds LoRA with PEFT and measures on the
device:

* featurisation as the pipeline does it (one batched forward + backward with per-sample gradient hooks,
  then the seeded JL projection, cached on the device or regenerated block by block) against plain
  batched forward + backward of the same scalar, and against a per-sample autograd loop;
* in fp32, TF32 (matmuls) and bf16 autocast;
* exactness: the hook gradients against per-sample autograd (fp32), max relative error;
* a few steps of adapter training in bf16 autocast (the loss must fall).

Targets of the issue: featurisation ≥ 0.8× plain forward+backward and ≥ 20× the per-sample loop.

    python benchmarks/gpu_check.py              # on a GPU (< 8 min on one H100/H200-class GPU)
    python benchmarks/gpu_check.py --quick      # CPU dry run with tiny shapes (CI's bench-quick)

Writes benchmarks/results/gpu_check[_quick].{json,md}. On a CPU-only machine without --quick it
stops with a message (the numbers would not be GPU numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, machine_info, write_results  # noqa: E402,I001

SHAPES = {
    # Llama-3.2-1B: hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192, vocab 128256
    "llama_1b": dict(kind="decoder", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, intermediate_size=8192, vocab_size=128256),
    # all-MiniLM-L6-v2: hidden 384, 6 layers, 12 heads, MLP 1536, vocab 30522
    "minilm": dict(kind="encoder", hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536, vocab_size=30522),
}
QUICK = {
    "llama_1b": dict(kind="decoder", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=128, vocab_size=1000),
    "minilm": dict(kind="encoder", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=128, vocab_size=1000),
}


def build(shape: dict, rank: int, device, seed: int = 0):
    """(peft model, per-sample scalar fn) for a random model of ``shape`` with LoRA on attention q/v."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    spec = {k: v for k, v in shape.items() if k != "kind"}
    if shape["kind"] == "decoder":
        base = LlamaForCausalLM(LlamaConfig(**spec, max_position_embeddings=4096, tie_word_embeddings=True))
        targets = ["q_proj", "v_proj"]
    else:
        base = BertModel(BertConfig(**spec, max_position_embeddings=512), add_pooling_layer=False)
        targets = ["query", "value"]
    for p in base.parameters():
        p.requires_grad_(False)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, lora_dropout=0.0))
    model.to(device).eval()
    direction = torch.randn(shape["hidden_size"], generator=torch.Generator().manual_seed(seed)).to(device)

    def scalar(ids, mask):
        """One number per sample: the log-probability of token 7 after the last token (decoder) or the
        mean-pooled hidden state along a fixed direction (encoder)."""
        if shape["kind"] == "decoder":
            logits = model(input_ids=ids, attention_mask=mask).logits
            last = mask.sum(1) - 1
            return torch.log_softmax(logits[torch.arange(ids.shape[0], device=ids.device), last].float(), -1)[:, 7]
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return pooled @ direction

    return model, scalar


def batches(n: int, batch: int, length: int, vocab: int, device, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (batch, length), generator=g)
        lens = torch.randint(length // 2, length + 1, (batch,), generator=g)
        mask = (torch.arange(length)[None, :] < lens[:, None]).long()
        out.append((ids.to(device), mask.to(device)))
    return out


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama_1b,minilm")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batches", type=int, default=8, help="timed batches per configuration")
    ap.add_argument("--loop-samples", type=int, default=16, help="samples timed in the per-sample loop")
    ap.add_argument("--dim", type=int, default=400)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="CPU dry run with tiny shapes (not a result)")
    args = ap.parse_args(argv)

    import torch

    from elora_ray.featurize.gradients import PerSampleGradients, gradient_layers
    from elora_ray.featurize.projection import JLProjector

    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print("gpu_check: no GPU visible to torch; run with --quick for the CPU dry run", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    shapes = QUICK if args.quick else SHAPES
    if args.quick:
        args.batch, args.length, args.batches, args.loop_samples, args.dim, args.train_steps = 4, 16, 2, 4, 32, 6
    precisions = ["fp32", "tf32", "bf16"] if cuda else ["fp32", "bf16"]
    t_start = time.perf_counter()
    rows, checks, training = [], [], []

    def mode(precision: str):
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return torch.autocast(device.type, enabled=False)

    for name in args.models.split(","):
        shape = shapes[name]
        model, scalar = build(shape, args.rank, device)
        layers = gradient_layers(model)
        params = [q for g in layers for q in g.module.parameters(recurse=False)]
        p = sum(g.size for g in layers)
        data = batches(args.batches + 1, args.batch, args.length, shape["vocab_size"], device)

        # exactness (fp32): hooks against a per-sample autograd loop
        ids, mask = data[0]
        with mode("fp32"), PerSampleGradients(layers) as psg:
            hooked = psg.backward(scalar(ids, mask))
        ref = []
        for b in range(min(4, ids.shape[0])):
            g = torch.autograd.grad(scalar(ids[b:b + 1], mask[b:b + 1])[0], params)
            ref.append(torch.cat([x.reshape(-1) for x in g]))
        ref = torch.stack(ref).float()
        err = float(((hooked[: len(ref)] - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-30)).max())
        checks.append({"model": name, "device": device.type, "gradient_params": p, "max_relative_error": err})
        for q in params:
            q.grad = None

        for precision in precisions:
            for cached in (True, False):
                budget = 1e9 if cached else 0.0
                proj = JLProjector(p, args.dim, seed=1, cache_limit_mb=budget, device=device)

                def ours(ids, mask):
                    with mode(precision), PerSampleGradients(layers) as psg:
                        out = proj.project(psg.backward(scalar(ids, mask)))
                    for q in params:
                        q.grad = None
                    return out

                def plain(ids, mask):
                    with mode(precision):
                        scalar(ids, mask).sum().backward()
                    for q in params:
                        q.grad = None

                def timed(fn, items):
                    fn(*items[0])  # warm-up
                    sync(device)
                    t0 = time.perf_counter()
                    for it in items[1:]:
                        fn(*it)
                    sync(device)
                    return time.perf_counter() - t0

                n = args.batch * args.batches
                t_ours = timed(ours, data)
                t_plain = timed(plain, data)
                row = {"model": name, "precision": precision, "projection_cached": cached,
                       "ours_samples_per_s": n / t_ours, "plain_samples_per_s": n / t_plain,
                       "ours_vs_plain": t_plain / t_ours}
                if cached and precision == precisions[0]:
                    singles = [(ids[b:b + 1], mask[b:b + 1]) for ids, mask in data for b in range(ids.shape[0])]
                    singles = singles[: args.loop_samples + 1]

                    def loop(ids, mask):
                        with mode(precision):
                            g = torch.autograd.grad(scalar(ids, mask)[0], params)
                        return proj.project(torch.cat([x.reshape(-1) for x in g])[None].float())

                    t_loop = timed(loop, singles)
                    row["loop_samples_per_s"] = (len(singles) - 1) / t_loop
                    row["ours_vs_loop"] = row["ours_samples_per_s"] / row["loop_samples_per_s"]
                rows.append(row)
                print(json.dumps(row), flush=True)

        # bf16 adapter training: fit the scalar of random batches towards a target, a few steps
        for q in params:
            q.requires_grad_(True)
        lora = [q for n_, q in model.named_parameters() if "lora_" in n_]
        for q in lora:
            q.requires_grad_(True)
        opt = torch.optim.AdamW(lora, lr=1e-3)
        ids, mask = data[1]
        target = torch.zeros(ids.shape[0], device=device)
        losses = []
        t0 = time.perf_counter()
        for _ in range(args.train_steps):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = ((scalar(ids, mask) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sync(device)
        training.append({"model": name, "precision": "bf16 autocast", "steps": args.train_steps, "first_loss": losses[0],
                         "last_loss": losses[-1], "fell": losses[-1] < losses[0], "seconds": time.perf_counter() - t0})
        del model, opt
        if cuda:
            torch.cuda.empty_cache()

    info = machine_info()
    if cuda:
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    best = {m: max((r for r in rows if r["model"] == m), key=lambda r: r["ours_samples_per_s"]) for m in {r["model"] for r in rows}}
    payload = {
        "machine": info, "quick": args.quick, "seconds": round(time.perf_counter() - t_start, 1),
        "settings": {k: getattr(args, k) for k in ("batch", "length", "batches", "loop_samples", "dim", "rank", "train_steps")},
        "shapes": shapes, "featurize": rows, "exactness": checks, "training": training,
        "targets": {m: {"ours_vs_plain_ge_0.8": b["ours_vs_plain"] >= 0.8,
                        "ours_vs_loop_ge_20": next((r["ours_vs_loop"] for r in rows if r["model"] == m and "ours_vs_loop" in r), 0) >= 20}
                    for m, b in best.items()},
    }
    lines = [f"# GPU check{' (quick CPU dry run: not a result)' if args.quick else ''}", "",
             f"Command: `python benchmarks/gpu_check.py{' --quick' if args.quick else ''}`. Machine: {info.get('gpu') or info['cpu']}, "
             f"{info['date']}. Random models of the shapes below; LoRA r={args.rank} on q/v; batch {args.batch} × {args.length} tokens.",
             "", "| model | precision | projection | ours samples/s | plain fwd+bwd samples/s | ours / plain | per-sample loop samples/s | ours / loop |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['precision']} | {'cached' if r['projection_cached'] else 'regenerated'} | "
                     f"{r['ours_samples_per_s']:.1f} | {r['plain_samples_per_s']:.1f} | {r['ours_vs_plain']:.2f} | "
                     f"{r.get('loop_samples_per_s', float('nan')):.1f} | {r.get('ours_vs_loop', float('nan')):.1f} |")
    lines += ["", "| model | hook vs autograd max relative error (fp32) | gradient parameters |", "|---|---:|---:|"]
    lines += [f"| {c['model']} | {c['max_relative_error']:.2e} | {c['gradient_params']:,} |" for c in checks]
    lines += ["", "| model | training | steps | first loss | last loss |", "|---|---|---:|---:|---:|"]
    lines += [f"| {t['model']} | {t['precision']} | {t['steps']} | {t['first_loss']:.4g} | {t['last_loss']:.4g} |" for t in training]
    name = "gpu_check_quick" if args.quick else f"gpu_check_{(info.get('gpu') or 'gpu').lower().replace(' ', '_')}"
    write_results(name, payload, "\n".join(lines) + "\n")
    ok = all(c["max_relative_error"] < 1e-3 for c in checks) and all(t["fell"] for t in training)
    print(f"gpu_check: {'ok' if ok else 'FAILED'} in {payload['seconds']} s -> {RESULTS / name}.json", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
