"""Decoder speed on CPUs (issue 38, item 5): SmolLM2 training and featurisation throughput against a plain
forward+backward of the same model and batches, for LoRA in fp32, LoRA under bf16 autocast, and QLoRA (a 4-bit
base dequantised for every matmul) — the measurement the CPU default rests on.

In one process (no Ray; ``--threads`` torch threads, default all cores), on the prompts of a prepared run's tasks
(default: the decoder benchmark's seed-0 run folder, SST-2/CoLA/QNLI/MRPC at max_length 64; else the embedded
suite), for each adapter setting:

* ``plain``: the model as the pipeline builds it (``build_model_at_init``), forward + ``h.sum().backward()`` of the
  gold log-odds with the adapter's parameters requiring grad — the practical limit of one training step;
* ``train``: :func:`elora_ray.train.loop.train_adapter` (AdamW, ``compute.precision`` autocast, the optimizer step
  included) over the same batches;
* ``featurize full_rank`` / ``featurize adapter``: :class:`elora_ray.featurize.worker.SampleFeaturizer` called on
  the same batches as the featurize stage's Ray Data actors call it (per-sample gradients, the sketch or the JL
  projection).

Each row: one warm-up batch, then ``--batches`` timed batches of ``--batch-size``; samples/s and the ratio to
``plain`` of the same setting. Also each setting's model load time and peak RSS of the process.

    python benchmarks/decoder_speed.py                       # SmolLM2, 3 settings (~6 min on 2 idle cores)
    python benchmarks/decoder_speed.py --quick               # tiny-llama smoke test (not a result)

Writes ``benchmarks/results/decoder_speed[_quick].{json,md}``. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RUNS, machine_info, write_results  # noqa: E402,I001

SETTINGS = {
    "lora fp32": ["adapter.type=lora", "compute.precision=fp32"],
    "lora bf16 autocast": ["adapter.type=lora", "compute.precision=bf16"],
    "qlora (4-bit base)": ["adapter.type=qlora", "compute.precision=fp32"],
    "qlora bf16 autocast": ["adapter.type=qlora", "compute.precision=bf16"],
}
DEFAULT_DATA = RUNS / "ensemble_decoder_glue_smollm2" / "seed0"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(setting: str, sets: list[str], base_sets: list[str], tasks, batches, threads: int) -> list[dict]:
    import numpy as np
    import torch

    from elora_ray import load_config
    from elora_ray.featurize.gradients import gold_log_odds
    from elora_ray.featurize.model_at_init import build_model_at_init
    from elora_ray.featurize.worker import SampleFeaturizer
    from elora_ray.models.classifier import TaskSpec
    from elora_ray.train.loop import train_adapter

    torch.set_num_threads(threads)
    cfg = load_config(None, [*base_sets, *sets])
    specs = [TaskSpec.of(t) for t in tasks]
    by_name = {t.name: t for t in tasks}
    n_timed = sum(len(b) for b in batches[1:])
    rows = []

    t0 = time.perf_counter()
    peft_model, model = build_model_at_init(cfg, specs)
    load_s = time.perf_counter() - t0
    trainable = [p for p in peft_model.parameters() if p.requires_grad]

    def plain(batch):
        enc = model.tokenize([r[0] for r in batch], [r[1].text for r in batch], [r[1].text_pair for r in batch])
        y = torch.tensor([by_name[r[0]].label_id(r[1].label) for r in batch])
        from elora_ray.models.precision import autocast

        with autocast("bf16" if "bf16" in setting else "fp32", torch.device("cpu")):
            logits = peft_model(**enc)
        gold_log_odds(logits.float(), y).sum().backward()
        for p in trainable:
            p.grad = None

    plain(batches[0])
    t0 = time.perf_counter()
    for b in batches[1:]:
        plain(b)
    plain_s = time.perf_counter() - t0
    rows.append({"setting": setting, "row": "plain forward+backward", "samples_s": n_timed / plain_s, "load_s": load_s})

    train_rows = [r for b in batches for r in b]
    bs = len(batches[0])
    stats = train_adapter(peft_model, model, by_name, train_rows[:bs], epochs=1.0, batch_size=bs, seed=0,
                          precision="bf16" if "bf16" in setting else "fp32", count_flops=False)  # warm-up step
    stats = train_adapter(peft_model, model, by_name, train_rows[bs:], epochs=1.0, batch_size=bs, seed=0,
                          precision="bf16" if "bf16" in setting else "fp32", count_flops=False)
    rows.append({"setting": setting, "row": "train (AdamW step)", "samples_s": stats.samples / stats.seconds})
    del peft_model, model, trainable
    gc.collect()

    for gradient in ("full_rank", "adapter"):
        fcfg = load_config(None, [*base_sets, *sets, f"featurize.gradient={gradient}"])
        spec_dicts = [{"name": s.name, "labels": list(s.labels), "verbalizer": s.verbalizer} for s in specs]
        t0 = time.perf_counter()
        feat = SampleFeaturizer(fcfg.model_dump(mode="json"), spec_dicts, None, "gradients", threads=threads)
        load = time.perf_counter() - t0

        def call(batch):
            return feat({
                "task": np.array([r[0] for r in batch], dtype=object), "text": np.array([r[1].text for r in batch], dtype=object),
                "text_pair": np.array([r[1].text_pair for r in batch], dtype=object),
                "split": np.array(["train"] * len(batch), dtype=object), "sample_id": np.array([r[1].sample_id for r in batch], dtype=object),
                "label": np.array([r[1].label for r in batch], dtype=object),
                "label_id": np.array([by_name[r[0]].label_id(r[1].label) for r in batch]), "shard": np.zeros(len(batch), np.int64),
            })

        call(batches[0])
        t0 = time.perf_counter()
        for b in batches[1:]:
            call(b)
        sec = time.perf_counter() - t0
        rows.append({"setting": setting, "row": f"featurize {gradient}", "samples_s": n_timed / sec, "load_s": load})
        del feat
        gc.collect()
    for r in rows:
        r["vs_plain"] = r["samples_s"] / rows[0]["samples_s"]
        r["peak_rss_mb"] = round(_rss_mb(), 1)
    return rows


def render(data: dict) -> str:
    lines = [f"# Decoder speed on CPUs — {data['model']}" + (" (quick: not a result)" if data["quick"] else ""), "",
             f"{data['threads']} torch threads, batch {data['batch_size']}, max_length {data['max_length']}, "
             f"{data['timed_samples']} timed samples per row after one warm-up batch; texts: {data['data']}. "
             "`vs plain`: samples/s over the same setting's plain forward+backward.", "",
             "| setting | row | samples/s | vs plain | model load s | peak RSS MB (process so far) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in data["rows"]:
        load = f"{r['load_s']:.1f}" if "load_s" in r else ""
        lines.append(f"| {r['setting']} | {r['row']} | {r['samples_s']:.2f} | {r['vs_plain']:.2f} | {load} | {r['peak_rss_mb']:.0f} |")
    best = {}
    for r in data["rows"]:
        if r["row"].startswith("train"):
            best[r["setting"]] = r["samples_s"]
    if best:
        fastest = max(best, key=best.get)
        lines += ["", "Training samples/s by setting: " + ", ".join(f"{k} {v:.2f}" for k, v in best.items())
                  + f"; fastest: **{fastest}**."]
    m = data["machine"]
    lines += ["", f"Machine: {m['cpu']} ({m['cores']} cores), {m['date']}. Command: `python benchmarks/{data['command']}`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=4, help="batches per row: one warm-up, the rest timed")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--data", type=Path, default=None, help="a run folder whose prepared tasks give the texts")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of: " + ", ".join(SETTINGS))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.batch_size, args.batches, args.max_length = "tiny-llama", 4, 2, 32

    import numpy as np

    from elora_ray import load_config
    from elora_ray.artifacts import read_prepared
    from elora_ray.tasks.suite import generate_suite

    data = args.data or (DEFAULT_DATA if (DEFAULT_DATA / "data").is_dir() and not args.quick else None)
    if data is not None:
        tasks, source = read_prepared(data), f"the prepared tasks of `{data.name if data == DEFAULT_DATA else data}`"
    else:
        tasks, source = generate_suite(load_config(None, ["suite.samples_per_task=80"]).suite), "the embedded suite"
    pool = [(t.name, e) for t in tasks for e in t.splits["train"]]
    rng = np.random.default_rng(0)
    batches = [[pool[i] for i in rng.choice(len(pool), args.batch_size, replace=False)] for _ in range(args.batches)]
    base = [f"model.name_or_path={args.model}", f"model.max_length={args.max_length}"]
    chosen = [s.strip() for s in args.settings.split(",")]
    unknown = [s for s in chosen if s not in SETTINGS]
    if unknown:
        ap.error(f"--settings: unknown {unknown}; choose from {list(SETTINGS)}")
    out = {"model": args.model, "threads": args.threads, "batch_size": args.batch_size, "max_length": args.max_length,
           "timed_samples": args.batch_size * (args.batches - 1), "data": source, "quick": args.quick, "rows": [],
           "machine": machine_info(), "command": "decoder_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    name = "decoder_speed" + ("_quick" if args.quick else "")
    for setting in chosen:
        print(f"decoder_speed: {setting}", flush=True)
        out["rows"] += measure(setting, SETTINGS[setting], base, tasks, batches, args.threads)
        write_results(name, out, render(out))
    print(render(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
