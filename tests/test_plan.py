"""The resource plan: memory per stage from config.json alone (meta device), refusals that name the fix."""

from __future__ import annotations

import json

import pytest

from elora_ray.config import load_config
from elora_ray.errors import ConfigError
from elora_ray.plan import NodeShape, build_plan, model_shape, parse_bytes

LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
LLAMA_70B = LLAMA_8B | {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64}


def config_only(tmp_path, name: str, cfg: dict):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))  # no weights, no tokenizer: the plan needs neither
    return d


def test_shape_counts_match_a_real_model():
    """Counts from the meta device equal those of the real (tiny) model and its PEFT adapter."""
    from elora_ray.adapters import attach_adapter, count_parameters
    from elora_ray.config import AdapterConfig, ModelConfig
    from elora_ray.models.build import build_classifier
    from elora_ray.models.classifier import TaskSpec

    for name in ("tiny-llama", "tiny-bert"):
        for adapter in ("lora", "adapter"):
            mc, ac = ModelConfig(name_or_path=name), AdapterConfig(type=adapter)
            shape = model_shape(mc, ac)
            real = build_classifier(mc, [TaskSpec("a", ("x", "y"))])
            backbone = real.lm if name == "tiny-llama" else real.backbone
            assert shape.parameters == sum(p.numel() for p in backbone.parameters()), (name, adapter)
            assert shape.adapter_parameters == count_parameters(attach_adapter(real, ac)), (name, adapter)


def test_8b_qlora_fits_one_80gb_gpu_per_worker_and_a_16gib_head(tmp_path):
    path = config_only(tmp_path, "llama-8b", LLAMA_8B)
    cfg = load_config(None, [f"model.name_or_path={path}", "adapter.type=qlora"])
    node = NodeShape(cpus=16, host_bytes=parse_bytes("128GiB"), gpus=1, gpu_bytes=parse_bytes("80GB"),
                     head_bytes=parse_bytes("16GiB"))
    plan = build_plan(cfg, node).check()
    assert plan.shape.parameters == pytest.approx(8.03e9, rel=0.01)
    by = {s.stage: s for s in plan.stages}
    assert by["driver"].weights_bytes == 0 and by["driver"].host_peak_bytes < parse_bytes("2GiB")  # the head holds no weights
    assert by["model_check"].device == "cuda"  # the check runs where the model runs, not on the head
    for s in ("featurize", "train", "outputs"):
        assert by[s].device == "cuda" and by[s].compute == "bf16"
        assert parse_bytes("5GiB") < by[s].weights_bytes < parse_bytes("9GiB")  # 4-bit linears, the rest in float
        assert by[s].device_peak_bytes <= node.gpu_bytes
    assert by["train"].gradient_checkpointing  # auto: on for a decoder this size


def test_70b_fp32_on_24gb_gpus_is_refused_naming_the_fix(tmp_path):
    path = config_only(tmp_path, "llama-70b", LLAMA_70B)
    cfg = load_config(None, [f"model.name_or_path={path}", "model.dtype=float32"])
    node = NodeShape(cpus=32, host_bytes=parse_bytes("256GiB"), gpus=4, gpu_bytes=parse_bytes("24GB"))
    plan = build_plan(cfg, node)
    assert not plan.fits
    with pytest.raises(ConfigError) as err:
        plan.check()
    text = str(err.value)
    assert "train: one process needs" in text and "22.4 GiB GPU" in text
    assert "adapter.type=qlora + model.dtype=bfloat16" in text  # the smallest change, and that it is not enough
    assert "GPUs with more memory" in text


def test_a_fraction_of_a_gpu_is_refused_when_the_packed_processes_do_not_fit(tmp_path):
    """Small jobs pack several per GPU by fraction; the plan checks the packed total, and the fix it
    names (a larger share) is one that fits."""
    path = config_only(tmp_path, "llama-8b", LLAMA_8B)
    cfg = load_config(None, [f"model.name_or_path={path}", "adapter.type=qlora", "train.gpus_per_worker=0.25"])
    node = NodeShape(cpus=16, host_bytes=parse_bytes("256GiB"), gpus=1, gpu_bytes=parse_bytes("24GB"))
    plan = build_plan(cfg, node)
    train = [p for p in plan.problems if p.stage == "train"]
    assert train and "4 processes with 0.25 GPU each share one GPU" in train[0].message
    assert any(f.startswith("train.gpus_per_worker=1") for f in train[0].fixes)


def test_a_batch_that_does_not_fit_names_the_largest_that_does(tmp_path):
    path = config_only(tmp_path, "llama-8b", LLAMA_8B)
    cfg = load_config(None, [f"model.name_or_path={path}", "adapter.type=qlora", "model.max_length=1024"])
    node = NodeShape(cpus=16, host_bytes=parse_bytes("128GiB"), gpus=1, gpu_bytes=parse_bytes("80GB"))
    feat = next(p for p in build_plan(cfg, node).problems if p.stage == "featurize")
    assert feat.fixes[0].startswith("featurize.batch_size=")
    smaller = int(feat.fixes[0].split("=")[1].split()[0])
    ok = build_plan(load_config(None, [f"model.name_or_path={path}", "adapter.type=qlora", "model.max_length=1024",
                                       f"featurize.batch_size={smaller}"]), node)
    assert not [p for p in ok.problems if p.stage == "featurize"]


def test_elora_plan_command(tmp_path, capsys):
    from elora_ray.cli import main

    path = config_only(tmp_path, "llama-8b", LLAMA_8B)
    args = ["plan", "--set", f"model.name_or_path={path}", "--set", "adapter.type=qlora", "--gpus", "1",
            "--gpu-memory", "80GB", "--memory", "128GiB", "--head-memory", "16GiB"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "plan OK" in out and "| featurize | Ray Data actor |" in out and "holds no model weights" in out
    assert main(["plan", "--set", f"model.name_or_path={path}", "--gpus", "1", "--gpu-memory", "16GB"]) == 2
    assert "settings that fit" in capsys.readouterr().err
    assert main(["plan", "--set", "model.name_or_path=" + str(tmp_path / "nowhere")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_the_driver_never_builds_the_model(tmp_path, monkeypatch, tiny_sets):
    """The model check runs in a Ray task with the featurize resources: on the driver, building the
    model raises here, and the stage still succeeds — in another process, which recorded its peak."""
    import os

    from elora_ray.models import build
    from elora_ray.pipeline import run_stages

    def no_model_on_the_driver(*a, **k):
        raise AssertionError("the driver built the model")

    monkeypatch.setattr(build, "build_classifier", no_model_on_the_driver)
    monkeypatch.setattr("elora_ray.model_check.build_classifier", no_model_on_the_driver)
    res = run_stages(load_config(None, tiny_sets), tmp_path / "run", until="model_check")
    info = res["model_check"]
    assert info["params_with_gradient"] > 0 and info["process"]["pid"] != os.getpid()
    assert info["process"]["device"] == "cpu" and info["process"]["peak_rss_bytes"] > 0
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["fits"] and plan["checked"] and [s["stage"] for s in plan["stages"]][:2] == ["driver", "model_check"]


def test_a_run_that_cannot_fit_this_machine_stops_before_loading(tmp_path, tiny_sets):
    from elora_ray.pipeline import run_stages

    path = config_only(tmp_path, "llama-70b", LLAMA_70B)
    cfg = load_config(None, [*tiny_sets, f"model.name_or_path={path}"])
    with pytest.raises(ConfigError, match="does not fit .*this machine"):
        run_stages(cfg, tmp_path / "run", until="model_check")
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["fits"] is False
    assert not (tmp_path / "run" / "model.json").exists()
