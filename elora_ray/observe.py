"""Metrics for people watching a run: ``<run>/metrics/*.jsonl``, TensorBoard, MLflow (``report_to``).

Every scalar goes first to an append-only JSON-lines file per scope (``metrics/train/g0.jsonl``,
``metrics/boost.jsonl``, ...): that file is always written and is the record the other sinks
mirror. With ``report_to: [tensorboard]`` (the default) the same scalars are written as
TensorBoard event files under ``<run>/tensorboard/<scope>/`` by the process that produced them
(Ray Train workers included; the run directory is shared storage on a cluster anyway).

MLflow is fed by the driver only (:func:`sync_mlflow`, called after each stage): it forwards
the lines it has not sent yet, so worker processes never open the tracking store concurrently,
and a resumed run continues the same MLflow run (its id is kept in ``metrics/mlflow.json``).

    tensorboard --logdir runs/demo/tensorboard
    mlflow ui --backend-store-uri sqlite:///runs/demo/mlflow.db
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

from .io import write_json
from .layout import METRICS_DIR, TENSORBOARD_DIR

log = logging.getLogger(__name__)


class MetricsReporter:
    """Scalars of one scope (e.g. ``train/g0``) → ``metrics/<scope>.jsonl`` (+ TensorBoard)."""

    def __init__(self, run_dir: str | Path, scope: str, report_to: Iterable[str] = ("tensorboard",)) -> None:
        self.run_dir, self.scope = Path(run_dir), scope.strip("/")
        self.path = self.run_dir / METRICS_DIR / f"{self.scope}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if "tensorboard" in report_to:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=str(self.run_dir / TENSORBOARD_DIR / self.scope), flush_secs=10)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record the numeric entries of ``metrics`` at ``step`` (others are ignored)."""
        values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not values:
            return
        row = {"step": int(step), "time": round(time.time(), 3), **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsReporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def log_metrics(run_dir: str | Path, scope: str, metrics: dict[str, Any], step: int = 0,
                report_to: Iterable[str] = ("tensorboard",)) -> None:
    """One-off: record ``metrics`` for ``scope`` at ``step`` and close the writers."""
    with MetricsReporter(run_dir, scope, report_to) as r:
        r.log(metrics, step)


def read_metrics(run_dir: str | Path, scope: str) -> list[dict]:
    path = Path(run_dir) / METRICS_DIR / f"{scope}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(obj) if isinstance(obj, (list, tuple)) else str(obj)}


def sync_mlflow(run_dir: str | Path, cfg) -> int:
    """Forward metrics lines not yet sent to MLflow (no-op unless ``mlflow`` is in ``report_to``).

    Returns the number of values sent. Params (the flattened config) are set on the first sync.
    """
    if "mlflow" not in cfg.report_to:
        return 0
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    run_dir = Path(run_dir).resolve()
    state_path = run_dir / METRICS_DIR / "mlflow.json"
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state.get("tracking_uri") != uri or not state.get("run_id"):
        exp = client.get_experiment_by_name("elora")
        exp_id = exp.experiment_id if exp is not None else client.create_experiment("elora")
        run = client.create_run(exp_id, run_name=run_dir.name, tags={"elora.run_dir": str(run_dir)})
        params = [Param(k[:250], v[:6000]) for k, v in _flatten(cfg.model_dump(mode="json")).items()]
        for i in range(0, len(params), 100):
            client.log_batch(run.info.run_id, params=params[i : i + 100])
        state = {"tracking_uri": uri, "run_id": run.info.run_id, "offsets": {}}
        log.info("mlflow: logging to run %s (experiment 'elora')", run.info.run_id)
    sent = 0
    offsets: dict[str, int] = state["offsets"]
    for path in sorted((run_dir / METRICS_DIR).rglob("*.jsonl")):
        scope = str(path.relative_to(run_dir / METRICS_DIR).with_suffix(""))
        with open(path, "rb") as f:
            f.seek(offsets.get(scope, 0))
            data = f.read()
        end = data.rfind(b"\n") + 1  # only whole lines; a line being written is sent next time
        batch = []
        for line in data[:end].decode("utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            ts = int(row.get("time", time.time()) * 1000)
            for k, v in row.items():
                if k not in ("step", "time") and v is not None:
                    batch.append(Metric(f"{scope}/{k}", float(v), ts, int(row["step"])))
        for i in range(0, len(batch), 1000):
            client.log_batch(state["run_id"], metrics=batch[i : i + 1000])
        sent += len(batch)
        offsets[scope] = offsets.get(scope, 0) + end
    write_json(state_path, state)
    return sent
