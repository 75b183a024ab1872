"""report_to: metrics JSON lines always, TensorBoard event files, MLflow forwarded by the driver."""

from __future__ import annotations

import json
import struct

import pytest

from elora_ray.config import load_config
from elora_ray.errors import ConfigError
from elora_ray.observe import MetricsReporter, read_metrics, sync_mlflow


def read_tensorboard_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """An independent reader of TFRecord event files: {tag: [(step, value), ...]}."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(logdir.rglob("events.out.tfevents.*")):
        data = f.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            ev = Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_reporter_writes_json_lines_and_tensorboard_events(tmp_path):
    with MetricsReporter(tmp_path, "train/g0", ["tensorboard"]) as rep:
        for step in range(1, 4):
            rep.log({"train/loss": 1.0 / step, "note": "not a number", "flag": True}, step)
        rep.log({"validation/accuracy": 0.75, "validation/nan": float("nan")}, 3)
    rows = read_metrics(tmp_path, "train/g0")
    assert [r["step"] for r in rows] == [1, 2, 3, 3]
    assert rows[1]["train/loss"] == pytest.approx(0.5) and "note" not in rows[1] and "flag" not in rows[1]
    assert rows[3]["validation/nan"] is None
    tb = read_tensorboard_scalars(tmp_path / "tensorboard" / "train" / "g0")
    assert [s for s, _ in tb["train/loss"]] == [1, 2, 3]
    assert [v for _, v in tb["train/loss"]] == pytest.approx([1.0, 0.5, 1 / 3])
    assert tb["validation/accuracy"] == [(3, 0.75)]


def test_no_tensorboard_when_report_to_is_empty(tmp_path):
    with MetricsReporter(tmp_path, "boost", []) as rep:
        rep.log({"loss": 1.0}, 0)
    assert read_metrics(tmp_path, "boost") == [{"step": 0, "time": read_metrics(tmp_path, "boost")[0]["time"], "loss": 1.0}]
    assert not (tmp_path / "tensorboard").exists()


def test_report_to_shorthands_and_a_missing_mlflow(monkeypatch):
    assert load_config(None, ["report_to=none"]).report_to == []
    assert load_config(None, ["report_to=tensorboard"]).report_to == ["tensorboard"]
    assert load_config(None).report_to == ["tensorboard"]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert load_config(None, ["report_to=all"]).report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match="report_to.*pip install mlflow"):
        load_config(None, ["report_to=[tensorboard, mlflow]"])


def test_mlflow_receives_every_line_once(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, ["report_to=[mlflow]", "featurize.dim=32"])
    with MetricsReporter(tmp_path, "train/g1", cfg.report_to) as rep:
        rep.log({"train/loss": 2.0}, 1)
        rep.log({"train/loss": 1.5}, 2)
    assert not (tmp_path / "tensorboard").exists()
    assert sync_mlflow(tmp_path, cfg) == 2
    assert sync_mlflow(tmp_path, cfg) == 0  # nothing new
    with MetricsReporter(tmp_path, "train/g1", cfg.report_to) as rep:
        rep.log({"train/loss": 1.0}, 3)
    with open(tmp_path / "metrics" / "train" / "g1.jsonl", "a") as f:
        f.write('{"step": 4, "train/loss"')  # a line still being written is not sent yet
    assert sync_mlflow(tmp_path, cfg) == 1
    state = json.loads((tmp_path / "metrics" / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    history = client.get_metric_history(state["run_id"], "train/g1/train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.5), (3, 1.0)]
    assert client.get_run(state["run_id"]).data.params["featurize.dim"] == "32"
