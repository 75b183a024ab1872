"""Featurization throughput: ours vs a naive per-sample loop vs plain forward+backward.

For each batch size and projection dimension, in one process (no Ray, ``--threads`` torch
threads), on the embedded suite's texts:

(a) **ours**: one batched forward, ``PerSampleGradients`` backward (hooks), block-seeded
    ``JLProjector`` — exactly what the Ray Data actor runs per batch;
(b) **naive**: the reference code's method — one ``torch.autograd.grad`` call per sample,
    then a dense projection matrix (timed on ``--naive-samples`` samples only);
(c) **plain**: the same batches, forward + ``h.sum().backward()`` with the same parameters
    requiring grad, no hooks, no projection — the practical limit.

Also the peak resident memory of (a) streaming over growing numbers of samples (it must
stay flat: nothing per sample is kept but the d-dim output).

    python benchmarks/featurize_speed.py                                # MiniLM
    python benchmarks/featurize_speed.py --model smollm2 --batch-sizes 8,16
    python benchmarks/featurize_speed.py --quick                        # tiny-bert smoke test
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, machine_info, save_figure, write_results  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-sizes", default="8,16,32")
    ap.add_argument("--dims", default="200,400,800")
    ap.add_argument("--samples", type=int, default=256, help="samples timed per configuration for (a) and (c)")
    ap.add_argument("--naive-samples", type=int, default=48)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-sizes", default="256,1024,2048")
    ap.add_argument("--data", type=Path, default=None,
                    help="a run directory whose prepared data supplies the texts (default: the embedded suite)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--name", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.batch_sizes, args.dims, args.samples, args.naive_samples = "tiny-bert", "8", "64", 32, 8
        args.memory_sizes = "32,64"

    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from elora_ray import load_config
    from elora_ray.featurize.gradients import INPUT_SIDE, OUTPUT_SIDE, PerSampleGradients, gold_log_odds
    from elora_ray.featurize.model_at_init import build_model_at_init
    from elora_ray.featurize.projection import JLProjector
    from elora_ray.featurize.worker import gradient_layers_for
    from elora_ray.models.classifier import TaskSpec
    from elora_ray.tasks.suite import generate_suite

    torch.set_num_threads(args.threads)
    cfg = load_config(None, [f"model.name_or_path={args.model}", f"model.max_length={args.max_length}",
                             "suite.samples_per_task=400"])
    if args.data is not None:
        from elora_ray.artifacts import read_prepared

        tasks = read_prepared(args.data)
    else:
        tasks = generate_suite(cfg.suite)
    peft_model, model = build_model_at_init(cfg, [TaskSpec.of(t) for t in tasks])
    layers = gradient_layers_for(peft_model)
    p = sum(g.size for g in layers)
    params = [q for g in layers for q in g.module.parameters(recurse=False)]
    pool = [(t.name, e, t.label_id(e.label)) for t in tasks for e in t.splits["train"]]
    rng = np.random.default_rng(0)

    def rows(n: int):
        return [pool[i] for i in rng.choice(len(pool), n, replace=len(pool) < n)]

    def encode(batch):
        enc = model.tokenize([r[0] for r in batch], [r[1].text for r in batch], [r[1].text_pair for r in batch])
        return enc, torch.tensor([r[2] for r in batch])

    def ours(batch, proj):
        enc, y = encode(batch)
        with PerSampleGradients(layers) as psg:
            h = gold_log_odds(peft_model(**enc), y)
            out = proj.project(psg.backward(h))
        for q in params:
            q.grad = None
        return out, int(enc["attention_mask"].sum())

    def plain(batch):
        enc, y = encode(batch)
        h = gold_log_odds(peft_model(**enc), y)
        h.sum().backward()
        for q in params:
            q.grad = None
        return int(enc["attention_mask"].sum())

    def naive(batch, dense):
        tokens = 0
        outs = []
        for r in batch:
            enc, y = encode([r])
            h = gold_log_odds(peft_model(**enc), y)[0]
            g = torch.autograd.grad(h, params)
            outs.append(torch.cat([x.reshape(-1) for x in g]) @ dense)
            tokens += int(enc["attention_mask"].sum())
        return torch.stack(outs), tokens

    # The reference code's variant: per-sample autograd over *all* adapter parameters (A and B,
    # though ∂h/∂A = 0 at init) and a dense float64 projection matrix.
    all_params = [q for n, m in peft_model.named_modules() if isinstance(m, torch.nn.Linear)
                  and any(k in n.split(".") for k in OUTPUT_SIDE + INPUT_SIDE)
                  for q in m.parameters(recurse=False)]
    p_all = sum(q.numel() for q in all_params)

    def naive_reference(batch, dense64):
        for q in all_params:
            q.requires_grad_(True)
        tokens = 0
        outs = []
        for r in batch:
            enc, y = encode([r])
            h = gold_log_odds(peft_model(**enc), y)[0]
            g = torch.autograd.grad(h, all_params)
            outs.append(torch.cat([x.reshape(-1) for x in g]).double() @ dense64)
            tokens += int(enc["attention_mask"].sum())
        for q in all_params:
            q.requires_grad_(any(q is x for x in params))
        return torch.stack(outs), tokens

    def timed(fn, batches):
        fn(batches[0])  # warm-up
        t0 = time.perf_counter()
        tokens = sum(fn(b) for b in batches)
        return time.perf_counter() - t0, tokens

    results = []
    configs = [(b, d) for b in map(int, args.batch_sizes.split(",")) for d in map(int, args.dims.split(","))]
    for bs, d in tqdm(configs, desc="configurations", unit="config"):
        proj = JLProjector(p, d, seed=1)
        dense = proj.dense()
        batches = [rows(bs) for _ in range(max(2, args.samples // bs))]
        n = bs * (len(batches))
        t_a, tok_a = timed(lambda b: ours(b, proj)[1], batches)
        t_c, tok_c = timed(plain, batches)
        nb = [rows(1) for _ in range(args.naive_samples)]
        t_b, tok_b = timed(lambda b: naive(b, dense)[1], nb)
        n_b = len(nb)
        dense64 = torch.randn(p_all, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) / d**0.5
        t_r, tok_r = timed(lambda b: naive_reference(b, dense64)[1], nb)
        row = {
            "batch_size": bs, "dim": d, "samples": n,
            "ours_samples_s": n / t_a, "ours_tokens_s": tok_a / t_a,
            "plain_samples_s": n / t_c, "plain_tokens_s": tok_c / t_c,
            "naive_samples_s": n_b / t_b, "naive_tokens_s": tok_b / t_b, "naive_samples_timed": n_b,
            "naive_reference_samples_s": n_b / t_r,
        }
        row["ours_vs_naive_reference"] = row["ours_samples_s"] / row["naive_reference_samples_s"]
        row["plain_vs_naive"] = row["plain_samples_s"] / row["naive_samples_s"]
        row["ours_vs_naive"] = row["ours_samples_s"] / row["naive_samples_s"]
        row["ours_vs_plain"] = row["ours_samples_s"] / row["plain_samples_s"]
        results.append(row)

    # Memory while streaming: peak RSS after featurising growing sample counts (outputs kept, d floats each).
    memory = []
    proj = JLProjector(p, 400, seed=1)
    bs = int(args.batch_sizes.split(",")[-1])
    done = 0
    for target in map(int, args.memory_sizes.split(",")):
        outs = []
        while done < target:
            outs.append(ours(rows(bs), proj)[0].numpy())
            done += bs
        memory.append({"samples": done, "peak_rss_mb": round(_rss_mb(), 1)})

    data = {
        "benchmark": "featurize_speed",
        "model": args.model,
        "gradient_parameters": p,
        "max_length": args.max_length,
        "threads": args.threads,
        "machine": machine_info(),
        "command": " ".join(["featurize_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "results": results,
        "memory": memory,
        "targets": {"ours_vs_naive": ">= 10", "ours_vs_plain": ">= 0.5"},
    }
    md = [
        f"# Featurization throughput — {args.model} ({p:,} gradient parameters, {args.threads} threads)",
        "",
        "(a) ours: batched forward + hook per-sample gradients + block JL projection; (b) naive: per-sample "
        f"autograd loop + dense projection ({results[0]['naive_samples_timed']} samples timed); (c) plain batched "
        "forward+backward. Naive, reference-style: the per-sample loop over all adapter parameters (A and B) "
        "with a dense float64 projection, as the reference code does. "
        + (f"Texts: the prepared data of `{args.data}`." if args.data else "Texts of the embedded suite."),
        "",
        "| batch | d | ours samples/s | ours tokens/s | naive samples/s | naive, reference-style samples/s | plain samples/s "
        "| ours/naive | ours/naive ref. | plain/naive | ours/plain |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        md.append(f"| {r['batch_size']} | {r['dim']} | {r['ours_samples_s']:.1f} | {r['ours_tokens_s']:.0f} | "
                  f"{r['naive_samples_s']:.1f} | {r['naive_reference_samples_s']:.1f} | {r['plain_samples_s']:.1f} | "
                  f"{r['ours_vs_naive']:.1f}× | {r['ours_vs_naive_reference']:.1f}× | {r['plain_vs_naive']:.1f}× | "
                  f"{r['ours_vs_plain']:.2f} |")
    md += ["", "Peak resident memory while streaming (a), d=400: "
           + ", ".join(f"{m['samples']} samples → {m['peak_rss_mb']} MB" for m in memory) + ".", "",
           f"Targets: ours/naive ≥ 10×, ours/plain ≥ 0.5. Machine: {data['machine']['cpu']} "
           f"({data['machine']['cores']} cores), {data['machine']['date']}. Command: `python benchmarks/{data['command']}`.", ""]
    name = args.name or ("featurize_speed_quick" if args.quick else f"featurize_speed_{args.model}")
    write_results(name, data, "\n".join(md))
    _plot(results, RESULTS / f"{name}.png", args.model)
    print("\n".join(md))
    return 0


def _plot(results: list[dict], path: Path, model: str) -> None:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = max({r["dim"] for r in results} & {400} or {results[0]["dim"]})
    rows = [r for r in results if r["dim"] == d]
    bs = [r["batch_size"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("plain", "plain forward+backward (limit)"), ("ours", "ours: per-sample + projection"),
                       ("naive", "naive per-sample loop")):
        ax.plot(bs, [r[f"{key}_samples_s"] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s")
    ax.set_title(f"featurization throughput, {model}, d={d}")
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
