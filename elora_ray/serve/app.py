"""The Ray Serve application: ``EloraIngress`` (HTTP, FastAPI) → ``EloraModel`` (the ensemble).

* ``EloraModel`` holds one :class:`~elora_ray.ensemble.predictor.EnsemblePredictor` per replica
  (``num_replicas``, ``ray_actor_options`` num_cpus/num_gpus from :class:`ServeOptions`). Every input
  text of every request goes through one ``@serve.batch`` queue, so the texts of concurrent
  requests share forward passes (up to ``max_batch_size``; a batch is split by task and computed
  with ``predict_with_probabilities``, the numbers ``elora predict`` prints).
* ``EloraIngress`` (no model, 0 CPUs) parses and checks each request (:mod:`.protocol`) against the
  run's tasks before anything reaches a model replica, answers ``/health``, ``/metadata`` and
  ``/tasks``, and forwards predictions through a deployment handle. When the model replica that
  holds a request dies (killed, node lost), the handle raises and the ingress sends the request
  again, up to ``retries`` times, to a live replica; predictions have no side effects, so the client
  gets exactly one answer, computed once more. Serve's controller replaces the dead replica.

Builders: :func:`build_app` takes a dict (a Serve config's ``args``: ``serve run
elora_ray.serve.app:build_app run=runs/x``); :func:`application` takes :class:`ServeOptions`.
"""

import asyncio
import logging
import os
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from .metadata import read_metadata
from .options import ServeOptions
from .protocol import Limits, RequestError, parse_predict

log = logging.getLogger("elora.serve")

MODEL_DEPLOYMENT = "EloraModel"
INGRESS_DEPLOYMENT = "EloraIngress"


def _resolve_device(device: str) -> str:
    """``auto``: cuda when this replica reserved a GPU (its ``ray_actor_options``, from the options or a
    Serve config's ``deployments`` entry), else cpu."""
    import ray
    import torch

    num_gpus = len(ray.get_gpu_ids())

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but torch sees no GPU on node {ray.get_runtime_context().get_node_id()}")
        return device
    if num_gpus > 0:
        if not torch.cuda.is_available():
            raise RuntimeError(f"the replica reserved {num_gpus} GPU(s) but torch sees none on node "
                               f"{ray.get_runtime_context().get_node_id()} (a CPU-only torch or a driver problem)")
        return "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to the replica's GPU
    return "cpu"


@serve.deployment(name=MODEL_DEPLOYMENT, max_ongoing_requests=64, health_check_period_s=2, health_check_timeout_s=30)
class EloraModel:
    """One replica: the ensemble predictor, fed in batches gathered across requests."""

    def __init__(self, options: dict) -> None:
        import torch

        from ..ensemble.predictor import EnsemblePredictor

        import ray

        opts = ServeOptions.parse(options)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", opts.num_cpus)
        torch.set_num_threads(opts.torch_threads or max(1, int(cpus)))
        self.device = _resolve_device(opts.device)
        t0 = time.perf_counter()
        self.predictor = EnsemblePredictor(opts.run, device=self.device, batch_size=opts.max_batch_size)
        self.load_s = time.perf_counter() - t0
        self.predict_batch.set_max_batch_size(opts.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(opts.batch_wait_timeout_s)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.batches = 0
        self.items = 0
        log.info("EloraModel replica %s: %s loaded on %s in %.1fs", self.replica, opts.run, self.device, self.load_s)

    async def predict(self, task: str, texts: list[str], text_pairs: list[str | None] | None) -> list[dict]:
        """One request: its texts join the replica's batch queue one by one; answers come back in order."""
        pairs = text_pairs if text_pairs is not None else [None] * len(texts)
        return list(await asyncio.gather(*(self.predict_batch((task, t, p)) for t, p in zip(texts, pairs))))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict_batch(self, items: list[tuple[str, str, str | None]]) -> list[dict]:
        # the forward pass runs in a thread so the replica keeps answering health checks meanwhile
        return await asyncio.to_thread(self._predict_items, items)

    def _predict_items(self, items: list[tuple[str, str, str | None]]) -> list[dict]:
        self.batches += 1
        self.items += len(items)
        out: list[dict | None] = [None] * len(items)
        by_task: dict[str, list[int]] = {}
        for i, (task, _, _) in enumerate(items):
            by_task.setdefault(task, []).append(i)
        for task, rows in by_task.items():
            texts = [items[i][1] for i in rows]
            pairs = [items[i][2] for i in rows]
            results = self.predictor.predict_with_probabilities(task, texts, pairs if any(p is not None for p in pairs) else None)
            for i, r in zip(rows, results):
                out[i] = r
        return out  # type: ignore[return-value]

    def ping(self) -> dict:
        return {"replica": self.replica, "device": self.device, "load_s": round(self.load_s, 3),
                "batches": self.batches, "items": self.items, "pid": os.getpid()}


api = FastAPI(title="elora serve", description="Predictions of an EnsembleLoRA run's ensemble (see docs/operations.md)")


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}", "field": None},
                        status_code=exc.status_code)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, None, f"request body has {declared} bytes, more than the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, None, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@serve.deployment(name=INGRESS_DEPLOYMENT, max_ongoing_requests=512, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class EloraIngress:
    """HTTP routes; validates requests, forwards predictions to ``EloraModel`` (re-sent if its replica dies)."""

    def __init__(self, model: DeploymentHandle, options: dict) -> None:
        self.opts = ServeOptions.parse(options)
        self.model = model
        self.meta = read_metadata(self.opts.run)
        self.labels = {name: t["labels"] for name, t in self.meta["tasks"].items()}
        self.limits = Limits(self.opts.max_items, self.opts.max_text_chars, self.opts.max_body_bytes)
        self.retried = 0

    @api.get("/")
    def index(self) -> dict:
        return {"service": "elora serve", "run": self.meta["run"], "fingerprint": self.meta["fingerprint"],
                "routes": {"POST /predict": "labels and probabilities", "GET /health": "liveness of the model",
                           "GET /metadata": "tasks, groups, labels, model, fingerprint, limits",
                           "GET /tasks": "task names and labels"}}

    @api.get("/health")
    async def health(self) -> JSONResponse:
        try:
            replica = await asyncio.wait_for(self._await(self.model.ping.remote()), timeout=10)
        except Exception as exc:  # noqa: BLE001 - any failure means the model cannot answer now
            return JSONResponse({"status": "unavailable", "error": f"{type(exc).__name__}: {exc}"[:500]}, status_code=503)
        return JSONResponse({"status": "ok", "fingerprint": self.meta["fingerprint"], "model_replica": replica})

    @api.get("/metadata")
    def metadata(self) -> dict:
        o = self.opts
        return {**self.meta,
                "limits": {"max_items": o.max_items, "max_text_chars": o.max_text_chars, "max_body_bytes": o.max_body_bytes},
                "serving": {"replicas": o.replicas, "num_cpus": o.num_cpus, "num_gpus": o.num_gpus, "device": o.device,
                            "max_batch_size": o.max_batch_size, "batch_wait_timeout_s": o.batch_wait_timeout_s,
                            "max_ongoing_requests": o.max_ongoing_requests, "retries": o.retries,
                            "requests_resent_after_replica_death": self.retried}}

    @api.get("/tasks")
    def tasks(self) -> dict:
        return {"tasks": {name: {"labels": t["labels"], "group": t["group"]} for name, t in self.meta["tasks"].items()}}

    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        try:
            req = parse_predict(await _read_body(request, self.limits.max_body_bytes), self.labels, self.limits)
        except RequestError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status)
        for attempt in range(self.opts.retries + 1):
            try:
                predictions = await self.model.predict.remote(req.task, req.texts, req.text_pairs)
                break
            except RayActorError as exc:  # the replica died holding the request: send it again
                if attempt == self.opts.retries:
                    return JSONResponse({"error": f"model replicas kept failing ({self.opts.retries} retries): {exc}"[:1000],
                                         "field": None}, status_code=503)
                self.retried += 1
                log.warning("model replica died holding a request (%s); sending it again (%d/%d)",
                            type(exc).__name__, attempt + 1, self.opts.retries)
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
            except Exception as exc:  # noqa: BLE001 - a failure in the model is this request's 500, not the server's end
                log.exception("prediction failed for task %r (%d texts)", req.task, len(req.texts))
                return JSONResponse({"error": f"prediction failed: {type(exc).__name__}: {exc}"[:1000], "field": None},
                                    status_code=500)
        return JSONResponse({"task": req.task, "fingerprint": self.meta["fingerprint"], "predictions": predictions})

    @staticmethod
    async def _await(response):
        return await response


def application(opts: ServeOptions):
    """The Serve application for these options (deploy it with ``serve.run``)."""
    read_metadata(opts.run)  # a wrong run directory fails here, naming the missing file, not in a replica
    args = opts.model_dump()
    logging_config = {"enable_access_log": opts.access_log}
    model = EloraModel.options(
        num_replicas=opts.replicas, max_ongoing_requests=opts.max_ongoing_requests,
        ray_actor_options={"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus}, logging_config=logging_config,
    ).bind(args)
    return EloraIngress.options(num_replicas=opts.ingress_replicas, logging_config=logging_config).bind(model, args)


def build_app(args: dict):
    """Application builder for Serve configs: ``import_path: elora_ray.serve.app:build_app`` with
    ``args: {run: /shared/runs/x, replicas: 2, num_gpus: 1}`` (every :class:`ServeOptions` field)."""
    opts = ServeOptions.parse(dict(args))
    opts = opts.model_copy(update={"run": str(Path(opts.run).expanduser().resolve())})
    return application(opts)
