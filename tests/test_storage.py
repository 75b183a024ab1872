"""Run directories in a bucket: a whole `elora run --out s3://…` against a local S3 server (moto, on
127.0.0.1, configured only through the standard AWS variables), resumed on a machine without the
working copy; and the upload order that keeps the bucket consistent."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import TINY


@pytest.fixture()
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 with bucket ``runs``; the AWS variables point at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket="runs")
    yield client
    server.stop()


def _keys(client, prefix: str) -> dict[str, int]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="runs", Prefix=prefix):
        out.update({o["Key"][len(prefix):]: o["Size"] for o in page.get("Contents", [])
                    if not o["Key"].endswith("/")})  # pyarrow's empty "directory" marker objects
    return out


@pytest.mark.slow
def test_elora_run_into_a_bucket_and_resume_elsewhere(s3, tmp_path, monkeypatch, capsys):
    from elora_ray.cli import main
    from elora_ray.storage import RemoteRun

    uri = "s3://runs/exp/tiny"
    sets = [a for s in TINY for a in ("--set", s)]
    main(["run", "--out", uri, *sets])
    keys = _keys(s3, "exp/tiny/")
    for needed in ("report.json", "report.md", "groups.json", "config.yaml", "data/manifest.json", "features/state.json"):
        assert needed in keys, sorted(keys)[:40]
    assert any(k.startswith("features/") and k.endswith(".parquet") for k in keys)
    assert any(k.endswith(".safetensors") for k in keys)  # adapters
    assert not any(k.rsplit("/", 1)[-1].startswith(".") for k in keys)  # no temporaries, no local manifest
    report = json.loads(s3.get_object(Bucket="runs", Key="exp/tiny/report.json")["Body"].read())
    assert report["stages_skipped"] == []

    # Another machine: no working copy. The rerun downloads the bucket's run and skips every stage.
    shutil.rmtree(RemoteRun(uri).local)
    capsys.readouterr()
    main(["run", "--out", uri, *sets])
    again = json.loads(s3.get_object(Bucket="runs", Key="exp/tiny/report.json")["Body"].read())
    # every stage found its artifacts current (model_check always loads the model again, as locally)
    assert set(again["stages_skipped"]) == set(again["stages"]) - {"model_check"}, again["stages_skipped"]
    assert again["groups"] == report["groups"]
    assert json.loads(s3.get_object(Bucket="runs", Key="exp/tiny/groups.json")["Body"].read()) == \
        json.loads((RemoteRun(uri).local / "groups.json").read_text())


def test_upload_order_keeps_the_bucket_consistent(s3, tmp_path):
    """Changed data goes up before the JSON that declares it; stale JSON is deleted before anything
    else; files removed locally are removed from the bucket."""
    from elora_ray.storage import RemoteRun

    run = RemoteRun("s3://runs/order/run", cache=tmp_path)
    run.pull()
    (run.local / "features").mkdir(parents=True)
    (run.local / "features" / "shard-0.parquet").write_bytes(b"old")
    (run.local / "features" / "state.json").write_text('{"fingerprint": "old"}')
    assert run.push() == 2
    calls = []
    real_upload, real_delete = run._upload, run._delete
    run._upload = lambda rel: (calls.append(("put", rel)), real_upload(rel))[1]
    run._delete = lambda rels: (calls.extend(("del", r) for r in rels), real_delete(rels))[1]
    # the stage recomputes: old shard removed, a new one and a new state written
    (run.local / "features" / "shard-0.parquet").unlink()
    (run.local / "features" / "shard-1.parquet").write_bytes(b"new")
    (run.local / "features" / "state.json").write_text('{"fingerprint": "new"}')
    (run.local / ".hidden.tmp").write_text("x")  # temporaries never go up
    run.push()
    assert calls == [("del", "features/state.json"), ("put", "features/shard-1.parquet"),
                     ("del", "features/shard-0.parquet"), ("put", "features/state.json")]
    assert _keys(s3, "order/run/") == {"features/shard-1.parquet": 3, "features/state.json": len('{"fingerprint": "new"}')}
    assert run.push() == 0  # nothing changed


def test_a_bucket_that_does_not_exist_is_a_clear_error(s3):
    from elora_ray.errors import ConfigError
    from elora_ray.storage import RemoteRun

    with pytest.raises(ConfigError, match="s3://missing-bucket/run"):
        RemoteRun("s3://missing-bucket/run").pull()


def test_cli_keeps_bucket_uris_whole():
    from pathlib import Path

    from elora_ray.cli import build_parser

    args = build_parser().parse_args(["cluster", "--out", "s3://b/runs/x"])
    assert args.out == "s3://b/runs/x"
    assert build_parser().parse_args(["cluster", "--out", "runs/x"]).out == Path("runs/x")


def test_task_data_read_from_a_bucket(s3, tmp_path, monkeypatch):
    """Task files and a built-in reader's folder given as s3:// URIs are downloaded once into the cache
    and read with the ordinary readers (same sample ids as local files); the data fingerprint uses the
    bucket's sizes and times, so a fresh cache (another machine) finds the prepared data current; an
    edited object is prepared again; a missing object is a DataError naming the URI."""
    from elora_ray.config import load_config
    from elora_ray.errors import DataError
    from elora_ray.prepare import data_fingerprint, prepare

    s3.create_bucket(Bucket="data")
    reviews = "review,stars\n" + "".join(f"a lovely film {i},5\nan awful film {i},1\n" for i in range(30))
    s3.put_object(Bucket="data", Key="tasks/reviews.csv", Body=reviews.encode())
    rte = "".join(json.dumps({"premise": f"The cat {i} sat.", "hypothesis": f"A cat {i} sat.",
                              "label": "entailment" if i % 2 else "not_entailment", "idx": i}) + "\n" for i in range(40))
    for name in ("train.jsonl", "val.jsonl"):
        s3.put_object(Bucket="data", Key=f"glue/RTE/{name}", Body=rte.encode())
    cfg_file = tmp_path / "my.yaml"
    cfg_file.write_text("tasks:\n"
                        "  - {name: reviews, train: s3://data/tasks/reviews.csv, text: review, label: stars}\n"
                        "  - {name: rte, format: superglue/rte, path: s3://data/glue/RTE}\n")
    cfg = load_config(cfg_file)
    assert cfg.tasks[0].train == "s3://data/tasks/reviews.csv"  # not turned into a local path
    monkeypatch.setenv("ELORA_CACHE", str(tmp_path / "cache_a"))
    out = tmp_path / "run"
    first = prepare(cfg, out)
    assert sorted(first["tasks"]) == ["reviews", "rte"]
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert list((tmp_path / "cache_a" / "remote_data").rglob("reviews.csv"))
    assert list((tmp_path / "cache_a" / "remote_data").rglob("val.jsonl"))

    # the same data read from local files gives the same tasks, splits and sample ids
    from elora_ray.artifacts import read_prepared

    local = tmp_path / "local"
    (local / "RTE").mkdir(parents=True)
    (local / "reviews.csv").write_text(reviews)
    for name in ("train.jsonl", "val.jsonl"):
        (local / "RTE" / name).write_text(rte)
    cfg_local = cfg.model_copy(deep=True)
    cfg_local.tasks[0].train, cfg_local.tasks[1].path = str(local / "reviews.csv"), str(local / "RTE")
    prepare(cfg_local, tmp_path / "run_local")

    def ids(run):
        return {t.name: {s: sorted(e.sample_id for e in rows) for s, rows in t.splits.items()} for t in read_prepared(run)}

    remote_ids = ids(out)
    assert remote_ids == ids(tmp_path / "run_local")
    assert sum(len(v) for v in remote_ids["reviews"].values()) == 60

    # another machine: a fresh cache, the same fingerprint
    fp = manifest["fingerprint"]
    monkeypatch.setenv("ELORA_CACHE", str(tmp_path / "cache_b"))
    assert data_fingerprint(cfg) == fp
    # an edited object changes it
    s3.put_object(Bucket="data", Key="tasks/reviews.csv", Body=(reviews + "one more film,5\n").encode())
    assert data_fingerprint(cfg) != fp

    bad = cfg.model_copy(deep=True)
    bad.tasks[0].train = "s3://data/tasks/missing.csv"
    with pytest.raises(DataError, match="s3://data/tasks/missing.csv: no such file"):
        prepare(bad, tmp_path / "run_bad")


def test_working_copies_live_under_elora_remote_workdir(s3, tmp_path, monkeypatch):
    """A multi-node cluster points ELORA_REMOTE_WORKDIR at storage every node mounts; without it
    working copies stay in the user cache."""
    from elora_ray.storage import RemoteRun

    monkeypatch.setenv("ELORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ELORA_REMOTE_WORKDIR", raising=False)
    assert RemoteRun("s3://runs/a/run").local.is_relative_to(tmp_path / "cache" / "remote_runs")
    monkeypatch.setenv("ELORA_REMOTE_WORKDIR", str(tmp_path / "nfs"))
    run = RemoteRun("s3://runs/a/run")
    assert run.local.is_relative_to(tmp_path / "nfs") and run.local.name == "run"
