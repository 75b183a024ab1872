"""`elora serve` under load: throughput and p50/p99 latency at several concurrencies, against calling
the predictor directly in one process, and what batching across requests gains.

For each model (a small finished run is built once under ``benchmarks/runs/serve_load/<model>``,
or given with ``--run model=DIR``), on loopback, with closed-loop clients (each sends its next
request when the last is answered; one text per request, texts cycled from the run's test split):

* ``direct``: ``EnsemblePredictor.predict_with_probabilities`` in this process, one call at a time
  (what a single-process server without batching does; concurrent clients queue on a lock);
* ``serve, batched``: the Serve application, one model replica, ``max_batch_size`` 32;
* ``serve, unbatched``: the same with ``max_batch_size`` 1;

each for ``--seconds`` per concurrency level, with the same torch thread count everywhere
(``--threads``). The batching gain is batched / unbatched throughput at the same concurrency; the
mean batch size comes from the replica's counters. The load generator runs on the same machine
(and the same cores) as the server.

    python benchmarks/serve_load.py                          # tiny + minilm, concurrency 1 4 16 32
    python benchmarks/serve_load.py --models tiny --seconds 5 --concurrency 1 8
    python benchmarks/serve_load.py --run minilm=runs/demo   # an existing finished run
    python benchmarks/serve_load.py --quick                  # smoke test (tiny, 2 levels, 2 s)

Writes ``benchmarks/results/serve_load.{json,md}`` (``serve_load_quick`` with --quick).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RUNS, machine_info, write_results  # noqa: E402,I001

SMALL = ("suite.tasks_per_group=[2,2]", "featurize.dim=32", "featurize.shard_size=64", "estimate.num_subsets=24",
         "cluster.num_groups=2", "train.epochs=1", "boost.steps=1")
MODELS = {
    "tiny": ("model.name_or_path=tiny-bert", "suite.samples_per_task=48", *SMALL),
    "minilm": ("suite.samples_per_task=80", *SMALL),  # the default model, all-MiniLM-L6-v2
    "smollm2": ("model.name_or_path=smollm2", "suite.samples_per_task=40", *SMALL, "train.batch_size=8"),
}
"""Small runs: serving cost depends on the model and on how many adapters a task combines, not on accuracy."""


def ensure_run(model: str, given: dict[str, Path]) -> Path:
    if model in given:
        return given[model]
    out = RUNS / "serve_load" / model
    if (out / "ensemble" / "weights.json").is_file():
        return out
    print(f"[{model}] building a small finished run in {out} (elora combine) ...", flush=True)
    sets = [a for s in MODELS[model] for a in ("--set", s)]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "elora_ray.cli", "combine", "--out", str(out), *sets], check=True,
                   cwd=HERE.parent, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    print(f"[{model}] run built in {time.perf_counter() - t0:.0f}s", flush=True)
    return out


def closed_loop(call, texts: list[str], concurrency: int, seconds: float) -> dict:
    """``concurrency`` clients, each calling ``call(client, text)`` back to back for ``seconds``."""
    lat: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        i = k
        state: dict = {}
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            ok = call(state, texts[i % len(texts)])
            lat[k].append(time.perf_counter() - t0)
            errors[k] += 0 if ok else 1
            i += concurrency

    t_start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    all_lat = np.array([x for row in lat for x in row])
    return {"concurrency": concurrency, "requests": int(all_lat.size), "errors": int(sum(errors)), "wall_s": round(wall, 2),
            "throughput_rps": round(all_lat.size / wall, 2),
            "p50_ms": round(float(np.percentile(all_lat, 50)) * 1e3, 2) if all_lat.size else None,
            "p99_ms": round(float(np.percentile(all_lat, 99)) * 1e3, 2) if all_lat.size else None}


def http_call(port: int, task: str):
    def call(state: dict, text: str) -> bool:
        conn = state.get("conn")
        if conn is None:
            conn = state["conn"] = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("POST", "/predict", body=json.dumps({"task": task, "text": text}),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            return resp.status == 200
        except (OSError, http.client.HTTPException):
            state["conn"] = None
            return False

    return call


def replica_counters(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())["model_replica"]


def bench_model(model: str, run: Path, levels: list[int], seconds: float, threads: int) -> dict:
    import torch
    from ray import serve

    from elora_ray.artifacts import read_prepared
    from elora_ray.ensemble.predictor import EnsemblePredictor
    from elora_ray.serve.app import build_app
    from elora_ray.serve.metadata import read_metadata

    meta = read_metadata(run)
    tasks = read_prepared(run)
    task = tasks[0].name
    texts = [e.text for e in tasks[0].splits["test"]] * 4
    adapters_per_task = {n: sum(1 for w in t["weights"] or [] if w) for n, t in meta["tasks"].items()}
    row: dict = {"model": model, "run": str(run), "model_name": meta["model"]["name_or_path"], "task": task,
                 "tasks": len(meta["tasks"]), "adapters": len(meta["adapters"]), "fingerprint": meta["fingerprint"],
                 "groups_used_by_task": adapters_per_task.get(task)}

    torch.set_num_threads(threads)
    predictor = EnsemblePredictor(run, batch_size=32)
    predictor.predict_with_probabilities(task, texts[:4])  # warm up
    lock = threading.Lock()

    def direct(state: dict, text: str) -> bool:
        with lock:
            predictor.predict_with_probabilities(task, text)
        return True

    row["load_average_before"] = [round(x, 2) for x in os.getloadavg()]  # others' work on a shared machine skews timings
    row["direct"] = [closed_loop(direct, texts, c, seconds) for c in levels]
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:  # the offline bound: 32 texts per call, no HTTP
        predictor.predict_with_probabilities(task, texts[:32])
        n += 32
    row["direct_batch32_texts_per_s"] = round(n / (time.perf_counter() - t0), 2)
    print(f"[{model}] direct: {row['direct']} ; offline batch of 32: {row['direct_batch32_texts_per_s']} texts/s", flush=True)
    del predictor

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        for label, batch in (("serve_batched", 32), ("serve_unbatched", 1)):
            t0 = time.perf_counter()
            serve.run(build_app({"run": str(run), "replicas": 1, "num_cpus": threads, "max_batch_size": batch,
                                 "batch_wait_timeout_s": 0.005, "max_ongoing_requests": 128}),
                      name="elora-bench", route_prefix="/")
            row.setdefault("deploy_s", {})[label] = round(time.perf_counter() - t0, 1)
            call = http_call(port, task)
            closed_loop(call, texts, 2, min(2.0, seconds))  # warm up
            out = []
            for c in levels:
                before = replica_counters(port)
                r = closed_loop(call, texts, c, seconds)
                after = replica_counters(port)
                items, batches = after["items"] - before["items"], after["batches"] - before["batches"]
                r["mean_batch"] = round(items / batches, 2) if batches else None
                out.append(r)
                print(f"[{model}] {label} c={c}: {r}", flush=True)
            row[label] = out
            serve.delete("elora-bench")
    finally:
        serve.shutdown()
    row["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    row["batching_gain"] = {str(b["concurrency"]): round(b["throughput_rps"] / u["throughput_rps"], 2) if u["throughput_rps"] else None
                            for b, u in zip(row["serve_batched"], row["serve_unbatched"])}
    row["serve_vs_direct"] = {str(b["concurrency"]): round(b["throughput_rps"] / d["throughput_rps"], 2) if d["throughput_rps"] else None
                              for b, d in zip(row["serve_batched"], row["direct"])}
    return row


def markdown(data: dict) -> str:
    lines = ["# `elora serve` under load", "",
             f"Closed-loop clients on loopback, one text per request, {data['seconds']} s per level, torch threads "
             f"{data['threads']} in the direct process and in the one model replica (`num_cpus` {data['threads']}); the "
             "load generator shares the machine. *direct*: `EnsemblePredictor.predict_with_probabilities` in one process, "
             "one call at a time. *batched*: `elora serve` with `max_batch_size` 32 (5 ms wait); *unbatched*: "
             "`max_batch_size` 1. Gain = batched / unbatched throughput.", ""]
    for r in data["models"]:
        lines += [f"**{r['model']}** ({r['model_name']}; {r['tasks']} tasks, {r['adapters']} adapters, task `{r['task']}`)", "",
                  "| clients | direct req/s | p50 ms | p99 ms | batched req/s | p50 ms | p99 ms | mean batch | unbatched req/s | p50 ms | p99 ms | batching gain |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for d, b, u in zip(r["direct"], r["serve_batched"], r["serve_unbatched"]):
            c = d["concurrency"]
            lines.append(f"| {c} | {d['throughput_rps']} | {d['p50_ms']} | {d['p99_ms']} | {b['throughput_rps']} | {b['p50_ms']} | "
                         f"{b['p99_ms']} | {b['mean_batch']} | {u['throughput_rps']} | {u['p50_ms']} | {u['p99_ms']} | "
                         f"{r['batching_gain'][str(c)]}x |")
        first, last = r["direct"][0], r["serve_batched"][-1]
        if first["p50_ms"] is not None and r["serve_unbatched"][0]["p50_ms"] is not None:
            lines += ["", f"At 1 client, served (unbatched) p50 − direct p50 = {r['serve_unbatched'][0]['p50_ms'] - first['p50_ms']:.1f} ms: "
                      "the HTTP proxy → ingress → model replica hops, on the same cores as the model. "
                      f"At {last['concurrency']} clients the replica's batches average {last['mean_batch']} texts."]
        errs = sum(x["errors"] for k in ("serve_batched", "serve_unbatched") for x in r[k])
        lines += ["", f"Load average (1, 5, 15 min) before / after: {r.get('load_average_before')} / "
                  f"{r.get('load_average_after')} on {data['machine']['cores']} cores (above the core count, other work "
                  "shared the CPUs and the timings are skewed)."]
        lines += ["", f"Offline bound (direct, 32 texts per call, no HTTP): {r['direct_batch32_texts_per_s']} texts/s. "
                  f"HTTP errors: {errs}. Deploy time: {r['deploy_s']}.", ""]
    return "\n".join(lines)


def page(data: dict) -> str:
    m = data["machine"]
    return markdown(data) + (f"\nMachine: {m['cpu']} ({m['cores']} cores, shared), {m['date']}. "
                             f"Command: `python benchmarks/{data['command'].strip()}`.\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny", "minilm"], choices=sorted(MODELS))
    ap.add_argument("--run", action="append", default=[], metavar="MODEL=DIR", help="use this finished run for MODEL")
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 32])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (and replica CPUs)")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny, concurrency 1 and 4, 2 s")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the stored .json")
    args = ap.parse_args(argv)
    if args.render:
        from benchmarks.common import RESULTS

        name = "serve_load_quick" if args.quick else "serve_load"
        data = json.loads((RESULTS / f"{name}.json").read_text())
        write_results(name, data, page(data))
        return 0
    if args.quick:
        args.models, args.concurrency, args.seconds = ["tiny"], [1, 4], 2.0
    given = {}
    for item in args.run:
        name, _, path = item.partition("=")
        if name not in MODELS or not path:
            ap.error(f"--run {item!r}: give MODEL=DIR with MODEL one of {sorted(MODELS)}")
        given[name] = Path(path).resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = {m: ensure_run(m, given) for m in args.models}

    import ray

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        rows = [bench_model(m, runs[m], args.concurrency, args.seconds, args.threads) for m in args.models]
    finally:
        ray.shutdown()
    data = {"machine": machine_info(), "command": "serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seconds": args.seconds, "threads": args.threads, "concurrency": args.concurrency, "models": rows,
            "wall_s": round(time.perf_counter() - t0, 1)}
    md = page(data)
    write_results("serve_load_quick" if args.quick else "serve_load", data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
