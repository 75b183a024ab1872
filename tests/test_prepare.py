"""The prepare stage keys the run's data by its content: identical data read again (files copied,
touched or moved) keeps the run's data fingerprint, so later stages stay valid; changed data does not."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq

from elora_ray.config import load_config
from elora_ray.layout import RunLayout
from elora_ray.prepare import prepare


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))


def config(folder):
    return load_config(None, [
        f"tasks=[{{name: a, train: {folder}/a.csv, text: text, label: label}},"
        f" {{name: b, train: {folder}/b.csv, text: text, label: label}}]",
    ])


ROWS_A = [(f"good movie number {i}" if i % 2 else f"bad movie number {i}", "pos" if i % 2 else "neg") for i in range(40)]
ROWS_B = [(f"sentence {i} is {'fine' if i % 3 else 'wrong'}", "ok" if i % 3 else "bad") for i in range(40)]


def test_identical_data_read_again_keeps_the_fingerprint_and_files(tmp_path, monkeypatch):
    data, out = tmp_path / "data", tmp_path / "run"
    write_csv(data / "a.csv", ROWS_A)
    write_csv(data / "b.csv", ROWS_B)
    first = prepare(config(data), out)
    part = RunLayout(out).data_split("a", "train")
    written = part.stat().st_mtime_ns

    # the same files touched (a copy, an rsync, a checkout): read again, same data, same fingerprint
    later = os.stat(data / "a.csv").st_mtime + 100
    os.utime(data / "a.csv", (later, later))
    second = prepare(config(data), out)
    assert second["inputs"] != first["inputs"]  # the files did change on disk ...
    assert second["fingerprint"] == first["fingerprint"]  # ... their data did not
    assert part.stat().st_mtime_ns == written  # nothing rewritten
    assert json.loads(RunLayout(out).data_manifest.read_text())["fingerprint"] == first["fingerprint"]

    # the same data in another folder
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved)
    assert prepare(config(moved), out)["fingerprint"] == first["fingerprint"]

    # nothing changed since: skipped without reading the files
    def must_not_read(cfg):
        raise AssertionError("prepare read the data again although nothing changed")

    monkeypatch.setattr("elora_ray.prepare.load_tasks", must_not_read)
    assert prepare(config(moved), out)["fingerprint"] == first["fingerprint"]


def test_changed_data_gets_a_new_fingerprint(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    write_csv(data / "a.csv", ROWS_A)
    write_csv(data / "b.csv", ROWS_B)
    first = prepare(config(data), out)
    flipped = [(t, "neg" if y == "pos" else "pos") if i == 3 else (t, y) for i, (t, y) in enumerate(ROWS_A)]
    write_csv(data / "a.csv", flipped)
    second = prepare(config(data), out)
    assert second["fingerprint"] != first["fingerprint"]
    labels = [r["label"] for split in ("train", "validation", "test")
              for r in pq.read_table(RunLayout(out).data_split("a", split)).to_pylist()]
    assert labels.count("pos") == sum(y == "pos" for _, y in flipped)  # the new data was written


def test_force_reads_again_and_keeps_the_fingerprint_of_identical_data(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    write_csv(data / "a.csv", ROWS_A)
    write_csv(data / "b.csv", ROWS_B)
    first = prepare(config(data), out)
    assert prepare(config(data), out, force=True)["fingerprint"] == first["fingerprint"]
