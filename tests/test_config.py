import textwrap
from pathlib import Path

import pytest

from elora_ray.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_issue_example_shape_is_accepted_and_paths_resolve(tmp_path):
    p = write(tmp_path, """
        model: {name_or_path: default}
        adapter: {type: lora, rank: 4}
        tasks:
          - name: cb
            train: data/cb/train.jsonl
            validation: data/cb/validation.jsonl
            test: data/cb/test.jsonl
            text: premise
            text_pair: hypothesis
            label: label
        seed: 0
    """)
    cfg = load_config(p)
    assert cfg.adapter.type == "lora" and cfg.adapter.rank == 4
    assert cfg.tasks[0].text == "premise" and cfg.tasks[0].text_pair == "hypothesis"
    assert cfg.tasks[0].train == str(tmp_path / "data/cb/train.jsonl")


def test_embedded_default_without_file():
    cfg = load_config(None)
    assert cfg.model.name_or_path == "default" and cfg.tasks == []


def test_unknown_key_is_named(tmp_path):
    p = write(tmp_path, "adapter: {type: lora, rnak: 4}\n")
    with pytest.raises(ConfigError, match=r"adapter\.rnak: unknown key"):
        load_config(p)


def test_wrong_type_is_named(tmp_path):
    p = write(tmp_path, "adapter: {rank: four}\n")
    with pytest.raises(ConfigError, match=r"adapter\.rank: .*integer.*'four'"):
        load_config(p)


def test_bad_adapter_type(tmp_path):
    with pytest.raises(ConfigError, match=r"adapter\.type"):
        load_config(write(tmp_path, "adapter: {type: prefix}\n"))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_malformed_yaml_names_line(tmp_path):
    p = write(tmp_path, "model:\n  name_or_path: [unclosed\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml:\d+:\d+: invalid YAML"):
        load_config(p)


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_duplicate_task_names(tmp_path):
    p = write(tmp_path, """
        tasks:
          - {name: a, train: x.jsonl}
          - {name: a, train: y.jsonl}
    """)
    with pytest.raises(ConfigError, match="duplicate task name 'a'"):
        load_config(p)


def test_task_name_used_in_paths_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"tasks\.0\.name"):
        load_config(write(tmp_path, "tasks: [{name: 'a/b', train: x.jsonl}]\n"))


def test_set_overrides_parse_yaml_values(tmp_path):
    p = write(tmp_path, "tasks: [{name: a, train: x.jsonl}]\n")
    cfg = load_config(p, ["adapter.rank=16", "adapter.target_modules=[query, key]", "tasks.0.label=y", "seed=3"])
    assert cfg.adapter.rank == 16 and cfg.adapter.target_modules == ["query", "key"]
    assert cfg.tasks[0].label == "y" and cfg.seed == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("adapter.rank", "expected key=value"),
        ("adapter..rank=3", "empty key"),
        ("tasks.5.name=x", "out of range"),
        ("adapter.rank=-1", r"adapter\.rank"),
        ("adapter.bogus=1", r"adapter\.bogus: unknown key"),
    ],
)
def test_bad_overrides(tmp_path, override, message):
    p = write(tmp_path, "tasks: [{name: a, train: x.jsonl}]\n")
    with pytest.raises(ConfigError, match=message):
        load_config(p, [override])


def test_deepspeed_settings_are_checked_up_front():
    cfg = load_config(None, ["train.strategy=deepspeed", "train.num_workers=2", "train.deepspeed.zero_stage=1",
                             "train.deepspeed.extra={gradient_clipping: 0.5}"])
    from elora_ray.train.deepspeed_engine import deepspeed_config

    ds = deepspeed_config(cfg.train)
    assert ds["zero_optimization"] == {"stage": 1} and ds["train_micro_batch_size_per_gpu"] == cfg.train.batch_size
    assert ds["gradient_clipping"] == 0.5
    assert load_config(None, ["train.strategy=deepspeed", "train.num_workers=1"]).train.deepspeed.extra == {}
    assert deepspeed_config(load_config(None, ["train.strategy=deepspeed", "train.num_workers=1"]).train)["gradient_clipping"] == 0.0
    with pytest.raises(ConfigError, match=r"deepspeed needs train.num_workers ≥ 1"):
        load_config(None, ["train.strategy=deepspeed"])
    with pytest.raises(ConfigError, match=r"train.deepspeed.zero_stage: Input should be less than or equal to 2"):
        load_config(None, ["train.strategy=deepspeed", "train.num_workers=2", "train.deepspeed.zero_stage=3"])
    with pytest.raises(ConfigError, match=r"train.deepspeed.extra: .*'optimizer' is set from train.lr"):
        load_config(None, ["train.strategy=deepspeed", "train.num_workers=2", "train.deepspeed.extra={optimizer: {type: Adam}}"])


def test_a_yaml_boolean_or_number_in_a_verbalizer_says_to_quote_it(tmp_path):
    """`verbalizer: {"0": no, "1": yes}`: YAML reads the words as booleans. The error names the task, the
    label and the line, and quotes the word as written (it used to say 'Input should be a valid string')."""
    p = write(tmp_path, """
        tasks:
          - {name: rte, format: superglue/rte}
          - name: sst2
            format: glue/sst2
            verbalizer:
              "0": negative
              "1": Yes
    """)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == (f'{p}:8: tasks[1] (sst2).verbalizer["1"]: got the boolean true — YAML reads '
                            'yes/no/true/false/on/off as booleans; quote the word: "Yes"')
    p = write(tmp_path, 'tasks: [{name: sst2, format: glue/sst2, verbalizer: {"0": 0, "1": "one"}}]\n')
    with pytest.raises(ConfigError, match=r'cfg\.yaml:1: tasks\[0\] \(sst2\)\.verbalizer\["0"\]: got the number 0 .*quote it: "0"'):
        load_config(p)
    p = write(tmp_path, "tasks: [{name: boolq, format: superglue/boolq, verbalizer: {on: a, 'false': b}}]\n")
    with pytest.raises(ConfigError, match=r'tasks\[0\] \(boolq\)\.verbalizer: the label on was read as the boolean true .*quote the label: "on"'):
        load_config(p)
    # from --set, where the text as written is gone, and from Python
    with pytest.raises(ConfigError, match=r'verbalizer\["0"\]: got the boolean false .*quote the word, e.g. "no"'):
        load_config(write(tmp_path, "tasks: [{name: t, train: x.jsonl}]\n"), ['tasks.0.verbalizer={"0": no}'])
    from elora_ray.config import TaskConfig

    with pytest.raises(ValueError, match=r"task 't': verbalizer\[\"1\"\]: got the boolean true"):
        TaskConfig(name="t", verbalizer={"1": True})
    # integer labels are the data's labels as text; quoted words pass
    cfg = load_config(write(tmp_path, "tasks: [{name: t, train: x.jsonl, verbalizer: {0: 'no', 1: 'yes'}}]\n"))
    assert cfg.tasks[0].verbalizer == {"0": "no", "1": "yes"}
