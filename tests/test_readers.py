"""Generic record readers: every format, line numbers, and every bad input named precisely."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from elora_ray.errors import DataError
from elora_ray.tasks.readers import detect_format, read_records

ROWS = [
    {"text": "a, quoted \"b\"", "label": "x"},
    {"text": "second", "label": "y"},
    {"text": "third", "label": "x"},
]


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- happy paths -------------------------------------------------------------------------


def test_jsonl_skips_blank_lines_and_keeps_real_line_numbers(tmp_path):
    p = write(tmp_path / "d.jsonl", "\n".join([json.dumps(ROWS[0]), "", "  ", json.dumps(ROWS[1])]) + "\n\n")
    assert read_records(p, "jsonl", "t") == [(1, ROWS[0]), (4, ROWS[1])]


def test_json_list_of_objects(tmp_path):
    p = write(tmp_path / "d.json", json.dumps(ROWS, indent=2))
    assert read_records(p, "json", "t") == [(i, r) for i, r in enumerate(ROWS, start=1)]


def test_csv_with_quotes_and_embedded_newline(tmp_path):
    p = write(tmp_path / "d.csv", 'text,label\n"a, quoted ""b""",x\n"multi\nline",y\nthird,x\n')
    recs = read_records(p, "csv", "t")
    assert [r for _, r in recs] == [ROWS[0], {"text": "multi\nline", "label": "y"}, ROWS[2]]
    assert [line for line, _ in recs] == [2, 4, 5]  # a row that spans lines reports its last line


def test_tsv_strips_bom_and_keeps_quotes_literal(tmp_path):
    p = write(tmp_path / "d.tsv", "\ufefftext\tlabel\n\" opening quote only\t1\nplain\t0\n")
    recs = read_records(p, "tsv", "t")
    assert recs == [(2, {"text": '" opening quote only', "label": "1"}), (3, {"text": "plain", "label": "0"})]


def test_parquet(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), p)
    assert read_records(p, "parquet", "t") == [(i, r) for i, r in enumerate(ROWS, start=1)]


def test_hf_disk_dataset_and_dataset_dict(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"text": [r["text"] for r in ROWS], "label": [0, 1, 0]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert read_records(tmp_path / "ds", "hf_disk", "t")[1] == (2, {"text": "second", "label": 1})
    assert read_records(tmp_path / "ds", "auto", "t")[0][1]["label"] == 0  # a directory is hf_disk

    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dd"))
    assert len(read_records(f"{tmp_path / 'dd'}::test", "auto", "t")) == 1
    with pytest.raises(DataError, match=r"DatasetDict with splits \['train', 'test'\]; name one as '.*dd::<split>'"):
        read_records(tmp_path / "dd", "hf_disk", "t")
    with pytest.raises(DataError, match=r"split 'dev' not in \['train', 'test'\]"):
        read_records(f"{tmp_path / 'dd'}::dev", "hf_disk", "t")
    (tmp_path / "notds").mkdir()
    write(tmp_path / "notds" / "x.txt", "")
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        read_records(tmp_path / "notds", "hf_disk", "t")


@pytest.mark.parametrize(
    "name, fmt",
    [("a.jsonl", "jsonl"), ("a.JSON", "json"), ("a.csv", "csv"), ("a.tsv", "tsv"), ("a.parquet", "parquet")],
)
def test_auto_detects_by_extension(tmp_path, name, fmt):
    p = write(tmp_path / name, "")
    assert detect_format(p) == fmt


def test_auto_rejects_unknown_extension_and_format(tmp_path):
    p = write(tmp_path / "data.txt", "x\n")
    with pytest.raises(DataError, match=r"data\.txt: cannot tell the format from the extension '\.txt'"):
        read_records(p, "auto", "t")
    with pytest.raises(DataError, match=r"unknown format 'xml'"):
        read_records(p, "xml", "t")


# --- bad inputs --------------------------------------------------------------------------


def test_malformed_jsonl_names_file_line_and_json_error(tmp_path):
    p = write(tmp_path / "d.jsonl", json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n{\"text\": \"x\",}\n")
    with pytest.raises(DataError) as info:
        read_records(p, "jsonl", "mytask")
    err = info.value
    assert (err.line, err.task, err.path) == (3, "mytask", str(p))
    assert "d.jsonl:3: invalid JSON (Expecting property name enclosed in double quotes" in str(err)
    assert str(err).startswith("task 'mytask', ")


def test_jsonl_line_that_is_not_an_object(tmp_path):
    p = write(tmp_path / "d.jsonl", json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"d\.jsonl:2: expected a JSON object, got list"):
        read_records(p, "jsonl", "t")


def test_json_that_is_not_a_list_of_objects(tmp_path):
    with pytest.raises(DataError, match="expected a JSON list of objects"):
        read_records(write(tmp_path / "d.json", json.dumps({"rows": ROWS})), "json", "t")
    with pytest.raises(DataError, match=r"d\.json:3: invalid JSON"):
        read_records(write(tmp_path / "d.json", "[\n{},\n}\n"), "json", "t")


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "tsv"])
def test_non_utf8_bytes_name_the_line(tmp_path, fmt):
    good = {"jsonl": b'{"text": "a", "label": "x"}\n', "json": b"[\n", "csv": b"text,label\n", "tsv": b"text\tlabel\n"}
    bad = {"jsonl": b'{"text": "caf\xe9"}\n', "json": b'{"text": "caf\xe9"}]\n', "csv": b"caf\xe9,x\n", "tsv": b"caf\xe9\tx\n"}
    p = write(tmp_path / f"d.{fmt}", good[fmt] + bad[fmt])
    with pytest.raises(DataError, match=rf"d\.{fmt}:2: not valid UTF-8 \(byte 0xe9 at column \d+\)"):
        read_records(p, fmt, "t")


@pytest.mark.parametrize("name", ["gone.jsonl", "gone.json", "gone.csv", "gone.tsv", "gone.parquet", "gone"])
def test_missing_file_is_named(tmp_path, name):
    with pytest.raises(DataError, match=rf"{name}: (file|dataset directory) not found"):
        read_records(tmp_path / name, "auto", "t")
    with pytest.raises(DataError, match="not found"):
        read_records(tmp_path / name, "hf_disk", "t")


@pytest.mark.parametrize(
    "name, text",
    [("e.jsonl", ""), ("e2.jsonl", "\n \n"), ("e.json", "[]"), ("e.csv", "text,label\n"), ("e.tsv", "text\tlabel\n"), ("e0.tsv", "")],
)
def test_empty_files_are_errors(tmp_path, name, text):
    with pytest.raises(DataError, match=rf"{name}: (no records|empty file)"):
        read_records(write(tmp_path / name, text), "auto", "t")


def test_empty_parquet_is_an_error(tmp_path):
    p = tmp_path / "e.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), p)
    with pytest.raises(DataError, match=r"e\.parquet: no records"):
        read_records(p, "parquet", "t")


def test_tsv_wrong_field_count_names_the_line(tmp_path):
    p = write(tmp_path / "d.tsv", "text\tlabel\na\t0\nb\t1\textra\n")
    with pytest.raises(DataError, match=r"d\.tsv:3: expected 2 tab-separated fields, found 3"):
        read_records(p, "tsv", "t")
    p = write(tmp_path / "short.tsv", "text\tlabel\na\n")
    with pytest.raises(DataError, match=r"short\.tsv:2: expected 2 tab-separated fields, found 1"):
        read_records(p, "tsv", "t")


def test_csv_wrong_field_count_and_duplicate_header(tmp_path):
    with pytest.raises(DataError, match=r"d\.csv:3: expected 2 comma-separated fields, found 3"):
        read_records(write(tmp_path / "d.csv", "text,label\na,0\nb,1,2\n"), "csv", "t")
    with pytest.raises(DataError, match=r"h\.csv:1: duplicate column names"):
        read_records(write(tmp_path / "h.csv", "text,text\na,0\n"), "csv", "t")


def test_corrupt_parquet(tmp_path):
    with pytest.raises(DataError, match=r"bad\.parquet: unreadable parquet"):
        read_records(write(tmp_path / "bad.parquet", b"not parquet at all"), "parquet", "t")
