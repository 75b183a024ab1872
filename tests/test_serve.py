"""`elora serve`: the Ray Serve application on the session's finished tiny run, over real HTTP on loopback.

One application (2 model replicas, 0.5 CPU each) serves every test of this module; answers are
compared with :class:`EnsemblePredictor` in this process. The last test kills a model replica while
clients send requests and checks that every request got exactly one correct answer and that Serve
replaced the replica.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("ray.serve", reason="needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")

from elora_ray.errors import ConfigError  # noqa: E402
from elora_ray.serve.options import ServeOptions  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = "elora-test"
LIMITS = {"max_items": 64, "max_text_chars": 2000, "max_body_bytes": 100_000}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int, prefix: str = "") -> None:
        self.port = port
        self.prefix = prefix

    def call(self, method: str, path: str, body=None, timeout: float = 120) -> tuple[int, dict]:
        """One HTTP request on its own connection; ``body``: bytes as is, anything else as JSON."""
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, self.prefix + path, body=data, headers={"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def predict(self, body) -> tuple[int, dict]:
        return self.call("POST", "/predict", body)


@pytest.fixture(scope="module")
def served(tiny_pipeline):
    """(client, run directory): the application deployed from the builder a Serve config names."""
    import ray
    from ray import serve

    from elora_ray.raysession import ensure_ray
    from elora_ray.serve.app import build_app

    _, run, _ = tiny_pipeline
    started = not ray.is_initialized()
    ensure_ray()
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"run": str(run), "replicas": 2, "num_cpus": 0.5, "max_batch_size": 8,
                             "batch_wait_timeout_s": 0.02, **LIMITS}), name=APP, route_prefix="/")
        yield Client(port), run
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()


@pytest.fixture(scope="module")
def predictor(tiny_pipeline):
    from elora_ray.ensemble.predictor import EnsemblePredictor

    return EnsemblePredictor(tiny_pipeline[1])


@pytest.fixture(scope="module")
def texts(tiny_pipeline) -> dict[str, list[str]]:
    from elora_ray.artifacts import read_prepared

    return {t.name: [e.text for e in t.splits["test"]][:6] for t in read_prepared(tiny_pipeline[1])}


def _same(got: list[dict], want: list[dict]) -> None:
    """Same labels and probabilities as the predictor (to rounding: batches are padded differently)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert list(g["probabilities"]) == list(w["probabilities"])
        np.testing.assert_allclose(list(g["probabilities"].values()), list(w["probabilities"].values()), atol=1e-6)
        p = sorted(w["probabilities"].values())
        if p[-1] - p[-2] > 1e-5:
            assert g["label"] == w["label"]


def test_predictions_match_the_predictor(served, predictor, texts):
    client, _ = served
    for task, xs in texts.items():
        status, body = client.predict({"task": task, "texts": xs})
        assert status == 200, body
        assert body["task"] == task
        _same(body["predictions"], predictor.predict_with_probabilities(task, xs))
    task, xs = next(iter(texts.items()))
    status, body = client.predict({"task": task, "text": xs[0]})  # one input
    assert status == 200
    _same(body["predictions"], predictor.predict_with_probabilities(task, xs[0]))
    pairs = ["and the second sentence", None, "another pair"]  # sentence pairs, null where an input has none
    status, body = client.predict({"task": task, "texts": xs[:3], "text_pairs": pairs})
    assert status == 200
    _same(body["predictions"], predictor.predict_with_probabilities(task, xs[:3], pairs))
    status, body = client.predict({"task": task, "text": xs[0], "text_pair": "a pair"})
    assert status == 200
    _same(body["predictions"], predictor.predict_with_probabilities(task, xs[0], "a pair"))


def test_concurrent_requests_are_batched_and_answered_in_order(served, predictor, texts):
    """Many small requests at once, mixing tasks: each gets its own answers; texts share forward passes."""
    client, _ = served
    jobs = [(task, xs[i % len(xs): i % len(xs) + 2]) for i in range(6) for task, xs in texts.items()]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda j: client.predict({"task": j[0], "texts": j[1]}), jobs))
    for (task, xs), (status, body) in zip(jobs, answers):
        assert status == 200, body
        _same(body["predictions"], predictor.predict_with_probabilities(task, xs))
    seen: dict[str, dict] = {}
    for _ in range(40):  # both replicas' counters, through /health (each call reaches one replica)
        status, body = client.call("GET", "/health")
        assert status == 200 and body["status"] == "ok"
        seen[body["model_replica"]["replica"]] = body["model_replica"]
        if len(seen) == 2:
            break
    items = sum(r["items"] for r in seen.values())
    batches = sum(r["batches"] for r in seen.values())
    assert batches < items, f"no batching: {batches} batches for {items} texts ({seen})"


def test_metadata_tasks_health(served, predictor):
    client, run = served
    status, meta = client.call("GET", "/metadata")
    assert status == 200
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert meta["data_fingerprint"] == manifest["fingerprint"]
    assert len(meta["fingerprint"]) == 16
    assert meta["run"] == str(Path(run).resolve())
    assert {n: t["labels"] for n, t in meta["tasks"].items()} == {n: predictor.labels(n) for n in predictor.tasks}
    assert [g["tasks"] for g in meta["groups"]] == [g.tasks for g in predictor.members.groups]
    assert meta["model"]["name_or_path"] == "tiny-bert" and meta["adapter"]["type"] == predictor.cfg.adapter.type
    assert meta["limits"] == LIMITS
    assert meta["serving"]["replicas"] == 2 and meta["serving"]["max_batch_size"] == 8
    status, tasks = client.call("GET", "/tasks")
    assert status == 200 and {n: t["labels"] for n, t in tasks["tasks"].items()} == {n: predictor.labels(n) for n in predictor.tasks}
    status, health = client.call("GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["fingerprint"] == meta["fingerprint"]
    assert health["model_replica"]["device"] == "cpu"
    status, index = client.call("GET", "/")
    assert status == 200 and "POST /predict" in index["routes"]


BAD = [  # (body, status, field or None, words the message has)
    (b"{not json", 400, None, "not valid JSON"),
    (b"", 400, None, "not valid JSON"),
    (b"\xff\xfe\x00", 400, None, "not UTF-8"),
    (b"[1, 2]", 400, None, "JSON object"),
    ({"text": "hello"}, 400, "task", "missing"),
    ({"task": 3, "text": "hello"}, 400, "task", "must be a string"),
    ({"task": "no_such_task", "text": "hello"}, 400, "task", "unknown task 'no_such_task'"),
    ({"task": "TASK"}, 400, "text", "missing"),
    ({"task": "TASK", "text": "a", "texts": ["b"]}, 400, "text", "either"),
    ({"task": "TASK", "text": "   "}, 400, "text", "empty"),
    ({"task": "TASK", "text": 5}, 400, "text", "must be a string, got a number"),
    ({"task": "TASK", "text": "a" * 2001}, 413, "text", "2001 characters"),
    ({"task": "TASK", "texts": []}, 400, "texts", "empty"),
    ({"task": "TASK", "texts": "abc"}, 400, "texts", "array"),
    ({"task": "TASK", "texts": ["ok", None]}, 400, "texts[1]", "must be a string, got null"),
    ({"task": "TASK", "texts": ["ok", ""]}, 400, "texts[1]", "empty"),
    ({"task": "TASK", "texts": ["a"] * 65}, 413, "texts", "65 items"),
    ({"task": "TASK", "texts": ["a", "b"], "text_pairs": ["c"]}, 400, "text_pairs", "1 items for 2 texts"),
    ({"task": "TASK", "texts": ["a", "b"], "text_pairs": ["c", 7]}, 400, "text_pairs[1]", "must be a string"),
    ({"task": "TASK", "text": "a", "text_pair": ["x"]}, 400, "text_pair", "must be a string, got an array"),
    ({"task": "TASK", "text": "a", "text_pairs": ["x"]}, 400, "text_pairs", "goes with 'texts'"),
    ({"task": "TASK", "text": "a", "labels": 1}, 400, "labels", "unknown field"),
    (json.dumps({"task": "TASK", "texts": ["a" * 1000] * 64}).encode() + b" " * 40_000, 413, None, "limit of 100000"),
]


@pytest.mark.parametrize("body,status,field,words", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_requests_name_the_field_and_the_server_keeps_serving(served, texts, body, status, field, words):
    client, _ = served
    task = next(iter(texts))
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace('"TASK"', json.dumps(task)))
    elif isinstance(body, bytes):
        body = body.replace(b'"TASK"', json.dumps(task).encode())
    got, answer = client.predict(body)
    assert got == status, answer
    assert answer["field"] == field
    assert words in answer["error"], answer["error"]
    if field is not None:
        assert answer["error"].startswith(f"{field}: ")
    ok, good = client.predict({"task": task, "text": texts[task][0]})
    assert ok == 200 and len(good["predictions"]) == 1


def test_wrong_routes_and_methods(served):
    client, _ = served
    status, body = client.call("GET", "/nowhere")
    assert status == 404 and "Not Found" in body["error"]
    status, body = client.call("GET", "/predict")
    assert status == 405 and "/predict" in body["error"]


def test_options_name_the_field(tmp_path, tiny_pipeline):
    from elora_ray.serve.app import build_app
    from elora_ray.serve.launch import load_options

    opts = ServeOptions.parse({"run": "r", "replicas": "3", "num_gpus": "0.5"})  # `serve run ... replicas=3` gives strings
    assert opts.replicas == 3 and opts.num_gpus == 0.5
    for bad, field in (({"run": "r", "replicas": 0}, "replicas"), ({"run": "r", "device": "tpu"}, "device"),
                       ({"run": "r", "replica": 2}, "replica"), ({}, "run"), ({"run": "r", "max_items": "many"}, "max_items")):
        with pytest.raises(ConfigError, match=f"serve option {field}:"):
            ServeOptions.parse(bad)
    with pytest.raises(FileNotFoundError, match="config.yaml not found"):
        build_app({"run": str(tmp_path)})
    f = tmp_path / "serve.yaml"
    f.write_text(yaml.safe_dump({"run": str(tiny_pipeline[1]), "replicas": 4, "num_gpus": 1}))
    opts = load_options(f, {"run": None, "replicas": 2, "num_cpus": None})  # flags given win over the file
    assert (opts.replicas, opts.num_gpus, opts.num_cpus) == (2, 1.0, 1.0)


def test_example_serve_config_is_valid():
    """configs/serve.yaml (docs/operations.md) is a Serve config whose import path resolves to the builder."""
    from ray.serve.schema import ServeDeploySchema

    from elora_ray.serve.app import build_app

    cfg = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "configs" / "serve.yaml").read_text()))
    app = cfg.applications[0]
    module, attr = app.import_path.split(":")
    assert getattr(__import__(module, fromlist=[attr]), attr) is build_app
    ServeOptions.parse(app.args)


def test_cli_serves_until_stopped(served, predictor, texts):
    """`elora serve` (the CLI path) deploys a second application next to the first, then deletes it on stop."""
    from ray import serve

    from elora_ray.cli import main
    from elora_ray.serve.launch import request_stop

    client, run = served
    rc: list[int] = []
    thread = threading.Thread(target=lambda: rc.append(main([
        "serve", "--run", str(run), "--port", str(client.port), "--host", "127.0.0.1", "--name", "elora-cli",
        "--route-prefix", "/cli", "--num-cpus", "0.25", "--max-batch-size", "4", "--max-items", "3"])))
    thread.start()
    cli = Client(client.port, "/cli")
    try:
        deadline = time.time() + 120
        while time.time() < deadline and thread.is_alive():
            try:
                status, body = cli.call("GET", "/health", timeout=10)
                if status == 200:
                    break
            except (ConnectionError, OSError):
                pass
            time.sleep(0.5)
        task, xs = next(iter(texts.items()))
        status, body = cli.predict({"task": task, "texts": xs[:3]})
        assert status == 200, body
        _same(body["predictions"], predictor.predict_with_probabilities(task, xs[:3]))
        assert cli.predict({"task": task, "texts": xs[:4]})[0] == 413  # --max-items reached the ingress
    finally:
        request_stop()
        thread.join(60)
    assert rc == [0]
    assert "elora-cli" not in serve.status().applications
    assert client.predict({"task": task, "text": xs[0]})[0] == 200  # the first application is untouched


def _model_replicas() -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith(f"SERVE_REPLICA::{APP}#EloraModel#"))


def test_killed_replica_is_replaced_and_no_request_is_lost_or_answered_twice(served, predictor, texts):
    """4 clients send 48-text requests back to back; one of the 2 model replicas is killed mid-load.
    Every request gets exactly one answer (no client retries: the proxy and the ingress stay up, and
    the ingress re-sends requests the dead replica held), every answer is right, and Serve starts a
    replacement."""
    import ray
    from ray import serve

    client, _ = served
    task = "polarity_food" if "polarity_food" in texts else next(iter(texts))
    batch = [f"{t} (variant {i})" for i in range(8) for t in texts[task]][:48]
    want = predictor.predict_with_probabilities(task, batch)
    _, before = client.call("GET", "/metadata")
    replicas = _model_replicas()
    assert len(replicas) == 2
    answers: dict[tuple[int, int], list] = {}
    lock = threading.Lock()
    sent = threading.Semaphore(0)

    def worker(k: int) -> None:
        for j in range(10):
            sent.release()
            status, body = client.predict({"task": task, "texts": batch})
            with lock:
                answers.setdefault((k, j), []).append((status, body))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for _ in range(8):  # requests are in flight on both replicas
        sent.acquire()
    time.sleep(0.3)
    ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=False)
    for t in threads:
        t.join(240)
    assert sorted(answers) == [(k, j) for k in range(4) for j in range(10)]
    for key, got in answers.items():
        assert len(got) == 1, f"request {key} answered {len(got)} times"
        status, body = got[0]
        assert status == 200, f"request {key}: {status} {body}"
        _same(body["predictions"], want)
    _, after = client.call("GET", "/metadata")
    resent = after["serving"]["requests_resent_after_replica_death"] - before["serving"]["requests_resent_after_replica_death"]
    assert resent >= 1, "the killed replica held no request; the test did not kill it mid-load"
    deadline = time.time() + 120
    while time.time() < deadline:
        dep = serve.status().applications[APP].deployments["EloraModel"]
        if dep.replica_states.get("RUNNING") == 2 and replicas[0] not in _model_replicas():
            break
        time.sleep(1)
    assert dep.replica_states.get("RUNNING") == 2, dep
    now = _model_replicas()
    assert len(now) == 2 and replicas[0] not in now and replicas[1] in now
    status, body = client.predict({"task": task, "texts": batch[:5]})
    assert status == 200
    _same(body["predictions"], want[:5])


def job_submit_recipe(run: Path, work: Path) -> None:
    """docs/operations.md's `ray job submit` recipe for serving, on a one-node head of its own (own temp
    dir and ports, killed by its processes at the end): the job deploys with --detach and ends, the
    application answers over HTTP, `serve shutdown` removes it."""
    import os
    import secrets
    import subprocess
    import sys

    from test_job_submit import _free_ports, _kill_cluster, _submit

    bin_dir = Path(sys.executable).parent
    temp_dir = f"/tmp/elora-servejob-{secrets.token_hex(4)}"
    gcs, dash, http_port, *p = _free_ports(7)
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "HOME": str(home), "RAY_AUTH_MODE": "token",
           "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    r = subprocess.run([str(bin_dir / "ray"), "get-auth-token", "--generate"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    try:
        r = subprocess.run([str(bin_dir / "ray"), "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                            f"--dashboard-port={dash}", "--node-ip-address=127.0.0.1", f"--dashboard-agent-listen-port={p[0]}",
                            f"--dashboard-agent-grpc-port={p[1]}", f"--metrics-export-port={p[2]}",
                            f"--runtime-env-agent-port={p[3]}", "--num-cpus=2", f"--temp-dir={temp_dir}",
                            "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        address = f"http://127.0.0.1:{dash}"
        r = _submit(address, env, ["python", "jobs/serve.py", "--run", str(run), "--host", "127.0.0.1",
                                   "--port", str(http_port), "--replicas", "1", "--num-cpus", "0.5", "--detach"], timeout=300)
        log = r.stdout + r.stderr
        assert r.returncode == 0 and "succeeded" in log, log[-3000:]
        assert f"at http://127.0.0.1:{http_port}/predict" in log, log[-3000:]
        client = Client(http_port)
        status, health = client.call("GET", "/health")
        assert status == 200 and health["status"] == "ok", health
        status, body = client.call("GET", "/tasks")
        task = next(iter(body["tasks"]))
        status, body = client.predict({"task": task, "texts": ["one text", "another text"]})
        assert status == 200 and len(body["predictions"]) == 2, body
        r = subprocess.run([str(bin_dir / "serve"), "shutdown", "--address", address, "--yes"], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    finally:
        _kill_cluster(temp_dir)
        _kill_cluster(f"127.0.0.1:{gcs}")


@pytest.mark.slow
def test_ray_job_submit_recipe(tiny_pipeline, tmp_path):
    job_submit_recipe(tiny_pipeline[1], tmp_path)
