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


# ------------------------------------------------------------------ auto GPU shares: small jobs pack by memory

MINILM = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384, "intermediate_size": 1536,
          "num_hidden_layers": 6, "num_attention_heads": 12, "vocab_size": 30522, "max_position_embeddings": 512,
          "type_vocab_size": 2}
GPU_80 = NodeShape(cpus=16, host_bytes=parse_bytes("128GiB"), gpus=1, gpu_bytes=parse_bytes("80GiB"))


def _this_machine(monkeypatch, node: NodeShape, cluster_gpus: int = 1, cluster_cpus: int = 16) -> None:
    """Pretend this machine (and its Ray instance) is ``node``."""
    from elora_ray import raysession
    from elora_ray.featurize import stage as featurize_stage
    from elora_ray.federated import stage as federated_stage

    monkeypatch.setattr(NodeShape, "this_machine", classmethod(lambda cls: node))
    for mod in (raysession, featurize_stage, federated_stage):
        monkeypatch.setattr(mod, "cluster_gpus", lambda: cluster_gpus, raising=False)
        monkeypatch.setattr(mod, "cluster_cpus", lambda: cluster_cpus, raising=False)


def test_the_packing_rule():
    """k = floor(GPU memory / (peak × 1.25)) processes per GPU, 1 ≤ k ≤ 8; a whole GPU when the memory is
    unknown or the process is one of ≥ 2 NCCL ranks."""
    from elora_ray.models.placement import packed_gpu_share

    GiB = 2**30
    assert packed_gpu_share(10 * GiB, 80 * GiB) == 1 / 6  # 80 / 12.5 = 6.4
    assert packed_gpu_share(1 * GiB, 80 * GiB) == 1 / 8  # at most 8 per GPU
    assert packed_gpu_share(70 * GiB, 80 * GiB) == 1.0  # does not fit twice
    assert packed_gpu_share(100 * GiB, 80 * GiB) == 1.0  # does not fit at all: a whole GPU (the plan refuses it)
    assert packed_gpu_share(1 * GiB, 0) == 1.0  # GPU memory unknown
    assert packed_gpu_share(1 * GiB, 80 * GiB, collective_ranks=2) == 1.0  # an NCCL rank of a DDP group
    assert packed_gpu_share(1 * GiB, 80 * GiB, collective_ranks=1) == 1 / 8


def test_a_small_model_packs_several_processes_per_gpu_and_the_plan_says_so(tmp_path, monkeypatch):
    """A 22M-parameter encoder (MiniLM's shape) on an 80 GiB GPU: featurize actors, the model check and
    single-worker training jobs each get 1/8 of the GPU, in the plan (table and JSON) and in what the
    stages reserve from Ray, which read the same plan."""
    from elora_ray.featurize.stage import actor_resources
    from elora_ray.plan import planned_gpu_share
    from elora_ray.train.runner import job_resources

    path = config_only(tmp_path, "minilm", MINILM)
    cfg = load_config(None, [f"model.name_or_path={path}"])
    plan = build_plan(cfg, GPU_80).check()
    assert plan.shape.parameters == pytest.approx(22.6e6, rel=0.02)
    by = {s.stage: s for s in plan.stages}
    for s in ("model_check", "featurize", "train", "outputs"):
        assert by[s].device == "cuda" and by[s].resources.gpus == 1 / 8, (s, by[s].resources)
    assert by["featurize"].processes == 8  # 8 actors on the one GPU (16 CPUs allow them)
    assert "(0.125 GPU)" in plan.table()
    assert {s["stage"]: s["resources"]["gpus"] for s in plan.to_dict()["stages"]}["featurize"] == 0.125
    # what the stages reserve: the plan's share (this machine is the 80 GiB one, its Ray instance has the GPU)
    _this_machine(monkeypatch, GPU_80)
    assert actor_resources(cfg) == (1.0, 1 / 8)
    assert planned_gpu_share(cfg, "train") == 1 / 8
    assert job_resources(cfg, use_gpu=True, workers=False)["num_gpus"] == 1 / 8
    assert job_resources(cfg, use_gpu=True)["num_gpus"] == 1 / 8  # local mode (train.num_workers: 0)
    one = load_config(None, [f"model.name_or_path={path}", "train.num_workers=1"])  # one Ray Train worker: no NCCL peer
    assert planned_gpu_share(one, "train") == 1 / 8
    # an explicit setting is taken as is
    given = load_config(None, [f"model.name_or_path={path}", "featurize.gpus_per_actor=1", "train.gpus_per_worker=0.5"])
    assert actor_resources(given) == (1.0, 1.0) and job_resources(given, use_gpu=True)["num_gpus"] == 0.5


def test_an_8b_qlora_model_gets_the_largest_share_that_fits(tmp_path, monkeypatch):
    """Llama-8B with QLoRA on an 80 GiB GPU: a featurize actor (~37 GiB at batch 32) keeps a whole GPU, while
    single-worker training jobs (~8 GiB) pack as many as fit with the 1.25 margin."""
    from elora_ray.featurize.stage import actor_resources

    path = config_only(tmp_path, "llama-8b", LLAMA_8B)
    cfg = load_config(None, [f"model.name_or_path={path}", "adapter.type=qlora"])
    plan = build_plan(cfg, GPU_80).check()
    by = {s.stage: s for s in plan.stages}
    for group in (("model_check", "featurize"), ("train", "outputs")):  # the processes that share one setting
        share = by[group[0]].resources.gpus
        assert all(by[s].resources.gpus == share for s in group)
        k = round(1 / share)
        assert share == 1 / k and 1 <= k <= 8, group
        peak = max(by[s].device_peak_bytes for s in group)
        assert k * peak * 1.25 <= GPU_80.gpu_bytes  # k fit, with the margin
        assert k == 8 or (k + 1) * peak * 1.25 > GPU_80.gpu_bytes  # k + 1 would not
    assert by["featurize"].resources.gpus == 1.0 and by["train"].resources.gpus < 1
    _this_machine(monkeypatch, GPU_80)
    assert actor_resources(cfg)[1] == next(s for s in plan.stages if s.stage == "featurize").resources.gpus


def test_data_parallel_ranks_and_unknown_gpu_memory_keep_whole_gpus(tmp_path, monkeypatch):
    """Two DDP workers are NCCL ranks: a whole GPU each, however small the model. Without the GPU's
    memory (a cluster whose GPUs this machine cannot see) every auto share stays 1."""
    from elora_ray.featurize.stage import actor_resources
    from elora_ray.models.placement import check_collective_gpu_share
    from elora_ray.plan import planned_gpu_share
    from elora_ray.train.runner import job_resources

    path = config_only(tmp_path, "minilm", MINILM)
    ddp = load_config(None, [f"model.name_or_path={path}", "train.num_workers=2"])
    train = next(s for s in build_plan(ddp, GPU_80).stages if s.stage == "train")
    assert train.resources.gpus == 1.0 and train.processes == 2
    _this_machine(monkeypatch, GPU_80)
    assert planned_gpu_share(ddp, "train") == 1.0
    share = job_resources(ddp, use_gpu=True, workers=False)["num_gpus"]
    assert share == 1.0
    check_collective_gpu_share(2, share, "train", "train.gpus_per_worker")  # accepted
    ray_train = load_config(None, [f"model.name_or_path={path}", "federated.engine=ray_train", "federated.train_workers=2"])
    assert planned_gpu_share(ray_train, "federated_train") == 1.0  # its workers are NCCL ranks
    assert planned_gpu_share(ray_train, "federated") == 1 / 8  # its client actors (featurise, score) are not
    local = load_config(None, [f"model.name_or_path={path}", "federated.engine=ray_train"])
    assert planned_gpu_share(local, "federated_train") == 1 / 8  # local mode: one process per group

    cfg = load_config(None, [f"model.name_or_path={path}"])
    unknown = NodeShape(cpus=16, host_bytes=parse_bytes("128GiB"), gpus=1, gpu_bytes=0)
    assert all(s.resources.gpus in (0, 1.0) for s in build_plan(cfg, unknown).stages)
    _this_machine(monkeypatch, NodeShape(cpus=16, host_bytes=parse_bytes("128GiB")), cluster_gpus=1)  # GPUs elsewhere
    assert actor_resources(cfg) == (1.0, 1.0)
    assert job_resources(cfg, use_gpu=True)["num_gpus"] == 1.0
    assert planned_gpu_share(cfg, "federated") == 1.0


def test_the_federated_client_pool_packs_by_memory(tmp_path, monkeypatch):
    """A tiny causal LM's client actors: 8 per 80 GiB GPU (16 CPUs allow them), each reserving 1/8; with
    federated.workers given, the cluster's GPUs are shared evenly by them as before."""
    from elora_ray.federated.stage import client_pool_resources

    cfg = load_config(None, ["model.name_or_path=tiny-llama"])
    _this_machine(monkeypatch, GPU_80)
    assert client_pool_resources(cfg) == (8, 1 / 8)
    _this_machine(monkeypatch, GPU_80, cluster_cpus=4)
    assert client_pool_resources(cfg) == (4, 1 / 8)  # the CPUs cap the pool; each actor still holds 1/8
    given = load_config(None, ["model.name_or_path=tiny-llama", "federated.workers=2"])
    assert client_pool_resources(given) == (2, 0.5)
    _this_machine(monkeypatch, NodeShape(cpus=16, host_bytes=parse_bytes("128GiB")), cluster_gpus=1)
    assert client_pool_resources(cfg) == (1, 1.0)  # memory unknown: one actor per GPU, as before
