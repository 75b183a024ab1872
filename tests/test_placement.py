"""Device placement: every built model on one device, and a reserved GPU that is not visible fails loudly."""

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch

from elora_ray.config import load_config
from elora_ray.errors import DeviceError
from elora_ray.featurize.model_at_init import build_model_at_init
from elora_ray.models.classifier import TaskSpec
from elora_ray.models.placement import assert_one_device, devices_of, place_model, worker_device

TASKS = [TaskSpec("sent", ("negative", "positive")), TaskSpec("nli", ("entailment", "neutral", "contradiction"))]


def _cfg(model: str, adapter: str):
    return load_config(None, [f"model.name_or_path={model}", "model.max_length=16", f"adapter.type={adapter}"])


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
@pytest.mark.parametrize("adapter", ["lora", "qlora", "adapter", "qadapter", "mplora"])
def test_every_built_model_is_on_one_device(model, adapter):
    """Unquantised models are built for the 'meta' device (a stand-in for a GPU: heads left on the CPU
    would show); 4-bit ones, which bitsandbytes places at load time, on the CPU."""
    target = "cpu" if adapter.startswith("q") else "meta"
    peft_model, classifier = build_model_at_init(_cfg(model, adapter), TASKS, device=target, train_heads=True)
    assert assert_one_device(peft_model) == torch.device(target)
    assert set(devices_of(peft_model)) == {target}
    # every trainable part (adapter, heads) is among what was checked
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and trainable <= set(devices_of(peft_model)[target])


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
def test_place_model_moves_heads_adapters_and_buffers_next_to_the_backbone(model):
    """The 'meta' device stands in for a GPU: after placement nothing is left on the CPU."""
    peft_model, classifier = build_model_at_init(_cfg(model, "lora"), TASKS, device="cpu", train_heads=True)
    place_model(peft_model, "meta")
    where = devices_of(peft_model)
    assert set(where) == {"meta"}, where
    assert any(p.requires_grad for p in peft_model.parameters())  # still trainable where it was


def test_a_model_split_across_devices_is_named():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    net[1].to("meta")
    with pytest.raises(DeviceError, match=r"split across devices.*1\.weight"):
        assert_one_device(net, "cpu")


def test_a_4bit_weight_on_another_device_is_not_moved_silently():
    class Params4bit(torch.nn.Parameter):  # the class name is what bitsandbytes uses
        pass

    layer = torch.nn.Linear(2, 2)
    layer.weight = Params4bit(torch.zeros(2, 2, device="meta"), requires_grad=False)
    with pytest.raises(DeviceError, match="4-bit weight 'weight'.*loaded on meta"):
        place_model(layer, "cpu")


def test_worker_device_without_a_reservation_is_the_cpu():
    assert worker_device(False, "x") == torch.device("cpu")


def test_a_reserved_gpu_that_torch_cannot_see_fails_loudly(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(DeviceError, match=r"a featurize actor reserved a GPU.*CUDA_VISIBLE_DEVICES='0'.*CUDA build"):
        worker_device(True, "a featurize actor")


def test_featurize_actor_that_reserved_a_gpu_it_cannot_see_stops(monkeypatch):
    """The real actor class, as Ray Data constructs it, with Ray's reservation faked."""
    import elora_ray.models.placement as placement
    from elora_ray.featurize.worker import SampleFeaturizer

    monkeypatch.setattr(placement, "reserved_gpu_ids", lambda: [0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _cfg("tiny-bert", "lora")
    specs = [{"name": t.name, "labels": list(t.labels)} for t in TASKS]
    with pytest.raises(DeviceError, match="featurize actor reserved a GPU"):
        SampleFeaturizer(cfg.model_dump(mode="json"), specs, None, "gradients")


def test_ray_gpu_reservation_without_a_visible_gpu_fails_in_the_worker():
    """A Ray instance that believes it has a GPU (declared, none present): the reserving task errors,
    the federated client pool shares it, and a federated Ray Train group reserves it and stops."""
    script = textwrap.dedent("""
        import ray
        from elora_ray.models.placement import reserved_gpu_ids, worker_device
        ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=%r)

        @ray.remote(num_gpus=1)
        def reserve():
            return reserved_gpu_ids(), str(worker_device(bool(reserved_gpu_ids()), "a GPU task"))

        @ray.remote(num_gpus=0)
        def plain():
            return reserved_gpu_ids(), str(worker_device(bool(reserved_gpu_ids()), "a CPU task"))

        print("plain", ray.get(plain.remote()))
        try:
            print("reserved", ray.get(reserve.remote()))
        except Exception as exc:
            print("ERROR", type(exc).__name__, str(exc).splitlines()[-1][:300])

        # the federated client pool: two actors sharing the GPU (federated.gpus_per_worker=0.5)
        from elora_ray.federated.pool import ActorPool
        from elora_ray.models.placement import gpu_share as worker_gpus

        class Probe:
            def ids(self):
                return reserved_gpu_ids()

        pool = ActorPool(Probe, (), 2, num_cpus=0.5, num_gpus=worker_gpus("auto", 2, 1))
        print("pool", sorted(pool.map("ids", [(0, ()), (1, ())]).results.values()))
        pool.shutdown()

        # FedAvg on Ray Train (federated.engine: ray_train, local mode): the group's task reserves the
        # GPU share and its worker builds the model there, so without a usable GPU it stops, named
        import numpy as np, pathlib, tempfile
        from elora_ray.config import load_config
        from elora_ray.federated.train_fedavg import run_fedavg_ray_train
        cfg = load_config(None, ["federated.engine=ray_train"])
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="fedrt"))
        try:
            run_fedavg_ray_train(cfg, {"all": ["c1"]}, {"w": np.zeros(2, np.float32)}, tmp, tmp / "ck")
        except Exception as exc:
            print("FEDRT", "reserved a GPU" in str(exc), "federated Ray Train worker 0 of group all" in str(exc))
        ray.shutdown()
    """ % tempfile.mkdtemp(prefix="rg", dir="/tmp"))  # short: Ray's socket paths must stay under 107 bytes
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env)
    assert "plain ([], 'cpu')" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "ERROR" in out.stdout and "a GPU task reserved a GPU" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "pool [[0], [0]]" in out.stdout, out.stdout + out.stderr[-3000:]  # each client actor holds half of GPU 0
    assert "FEDRT True True" in out.stdout, out.stdout + out.stderr[-3000:]


def test_federated_client_workers_share_the_clusters_gpus():
    from elora_ray.models.placement import gpu_share as worker_gpus

    assert worker_gpus("auto", 4, 0) == 0.0  # a CPU cluster
    assert worker_gpus("auto", 4, 2) == 0.5  # 4 actors on 2 GPUs
    assert worker_gpus("auto", 1, 8) == 1.0  # never more than one GPU per actor
    assert worker_gpus(0.25, 4, 0) == 0.25  # given: used as is (an autoscaling cluster)


def test_a_model_cache_built_by_two_processes_at_once_keeps_the_first_copy(tmp_path):
    """Featurize actors, DDP ranks or nodes sharing a cache may build the same model directory at once:
    the first complete copy is published, later ones are dropped (a reader never sees it vanish)."""
    from elora_ray.io import publish_once

    target = tmp_path / "models" / "m"
    with publish_once(target) as a:
        a.mkdir()
        (a / "config.json").write_text("first")
        with publish_once(target) as b:  # another builder finishes first
            b.mkdir()
            (b / "config.json").write_text("second")
        assert (target / "config.json").read_text() == "second"
    assert (target / "config.json").read_text() == "second"  # the slower copy was discarded, not swapped in
    assert sorted(p.name for p in target.parent.iterdir()) == ["m"]  # no temporaries left


def test_use_gpu_true_is_taken_as_is_on_a_cluster_that_has_no_gpu_yet(monkeypatch, caplog):
    """An autoscaling cluster has no GPU node until a job asks for one: an explicit train.use_gpu
    is not checked against a snapshot of the cluster there (a warning says the jobs will wait);
    a local Ray instance without GPUs, which nothing will grow, is a clear error."""
    import logging

    from elora_ray import raysession
    from elora_ray.config import load_config
    from elora_ray.errors import ConfigError
    from elora_ray.train import runner

    monkeypatch.setattr(runner, "cluster_gpus", lambda: 0)
    cfg = load_config(None, ["train.use_gpu=true"])
    monkeypatch.setattr(raysession, "_LOCAL_INSTANCE", True)
    with pytest.raises(ConfigError, match="this machine's Ray instance has no GPUs"):
        runner.resolve_use_gpu(cfg)
    monkeypatch.setattr(raysession, "_LOCAL_INSTANCE", False)
    with caplog.at_level(logging.WARNING, logger="elora_ray.train.runner"):
        assert runner.resolve_use_gpu(cfg) is True
    assert "wait until the autoscaler adds GPU nodes" in caplog.text
    assert runner.resolve_use_gpu(load_config(None, [])) is False  # auto: the GPUs the cluster has now


def test_nccl_ranks_never_share_a_gpu_refused_before_anything_starts(monkeypatch, tmp_path):
    """Two data-parallel ranks with half a GPU each would land on one GPU, where NCCL refuses them
    (minutes into a run). Refused up front: in the config (use_gpu true), when the training stage
    starts on a GPU cluster (use_gpu auto), and for the federated Ray Train engine."""
    import numpy as np

    from elora_ray.config import load_config
    from elora_ray.errors import ConfigError
    from elora_ray.federated import train_fedavg
    from elora_ray import raysession
    from elora_ray.train import runner
    from elora_ray.train.jobs import AdapterJob

    with pytest.raises(ConfigError, match="two NCCL ranks on one GPU"):
        load_config(None, ["train.use_gpu=true", "train.num_workers=2", "train.gpus_per_worker=0.5"])
    load_config(None, ["train.use_gpu=true", "train.num_workers=0", "train.gpus_per_worker=0.5"])  # local mode packs: fine
    load_config(None, ["train.num_workers=2", "train.gpus_per_worker=0.5"])  # auto: decided when the stage starts

    cfg = load_config(None, ["train.num_workers=2", "train.gpus_per_worker=0.5"])
    monkeypatch.setattr(runner, "ensure_ray", lambda *_: None)
    monkeypatch.setattr(runner, "resolve_use_gpu", lambda _cfg: True)
    monkeypatch.setattr(runner, "read_data_manifest", lambda _d: {"fingerprint": "f"})
    monkeypatch.setattr(runner, "job_done", lambda *_: False)
    started = []
    monkeypatch.setattr(runner, "run_job", lambda *a: started.append(a))
    with pytest.raises(DeviceError, match="two NCCL ranks on one GPU.*train.gpus_per_worker=1"):
        runner.run_jobs(cfg, tmp_path, [AdapterJob(id="g0", method="ensemble", tasks=["a"])])
    assert not started

    # a fraction given for 2 federated Ray Train workers (auto gives NCCL ranks whole GPUs: tests/test_plan.py)
    fed = load_config(None, ["federated.engine=ray_train", "federated.train_workers=2", "federated.gpus_per_worker=0.25"])
    monkeypatch.setattr(raysession, "cluster_gpus", lambda: 1)
    with pytest.raises(DeviceError, match="two NCCL ranks on one GPU.*federated.gpus_per_worker=1"):
        train_fedavg.run_fedavg_ray_train(fed, {"g0": ["a"], "g1": ["b"]}, {"w": np.zeros(2, np.float32)}, tmp_path,
                                          tmp_path / "ckpt")


def test_federated_pool_is_sized_by_gpus_and_memory_not_cpus():
    """An 8-CPU node with one GPU gets one client actor (each holds a model copy on its GPU), not 8;
    on CPUs the memory caps the pool as well as the CPUs."""
    from elora_ray.models.placement import client_pool_size

    GiB = 2**30
    assert client_pool_size(None, "auto", cpus=8, gpus=1, host_bytes=32 * GiB, actor_host_bytes=2 * GiB) == 1
    assert client_pool_size(None, "auto", cpus=32, gpus=4, host_bytes=256 * GiB, actor_host_bytes=2 * GiB) == 4
    assert client_pool_size(None, 0.5, cpus=32, gpus=4, host_bytes=256 * GiB, actor_host_bytes=2 * GiB) == 8
    assert client_pool_size(None, "auto", cpus=16, gpus=0, host_bytes=24 * GiB, actor_host_bytes=6 * GiB) == 4
    assert client_pool_size(None, "auto", cpus=2, gpus=0, host_bytes=24 * GiB, actor_host_bytes=1 * GiB) == 2
    assert client_pool_size(3, "auto", cpus=2, gpus=0, host_bytes=1 * GiB, actor_host_bytes=1 * GiB) == 3  # given: as is


def test_reference_and_linearised_jobs_hold_the_device_they_compute_on(monkeypatch, tmp_path):
    """With Ray Train workers a trained job's task only launches the worker group (0 CPUs), but the θ*
    reference and a linearised learner compute in their own task: they reserve one worker's CPUs and
    GPU share instead of landing, resource-free, anywhere (the head included)."""
    import ray

    from elora_ray.config import load_config
    from elora_ray.train import runner
    from elora_ray.train.jobs import AdapterJob

    cfg = load_config(None, ["train.num_workers=2", "train.cpus_per_worker=2"])
    monkeypatch.setattr(runner, "ensure_ray", lambda *_: None)
    monkeypatch.setattr(runner, "resolve_use_gpu", lambda _cfg: True)
    monkeypatch.setattr(runner, "read_data_manifest", lambda _d: {"fingerprint": "f"})
    monkeypatch.setattr(runner, "job_done", lambda *_: False)
    asked = {}

    class Launch:
        def __init__(self, fn):
            self.kw = {}

        def options(self, **kw):
            new = Launch(None)
            new.kw = kw
            return new

        def remote(self, cfg_data, run_dir, job, fp, use_gpu):
            asked[job["id"]] = self.kw
            return job["id"]

    class Stop(Exception):
        pass

    monkeypatch.setattr(ray, "remote", Launch)
    monkeypatch.setattr(ray, "wait", lambda *a, **k: (_ for _ in ()).throw(Stop()))
    jobs = [AdapterJob(id="g0", method="ensemble", tasks=["a"]),
            AdapterJob(id="theta", method="reference", tasks=[], kind="reference"),
            AdapterJob(id="lin", method="boost", tasks=["a"], kind="linearized")]
    with pytest.raises(Stop):
        runner.run_jobs(cfg.model_copy(update={"train": cfg.train.model_copy(update={"gpus_per_worker": 1.0})}), tmp_path, jobs)
    assert asked["g0"]["num_cpus"] == 0 and "num_gpus" not in asked["g0"]  # the worker group holds the rest
    for job in ("theta", "lin"):
        assert asked[job]["num_cpus"] == 2 and asked[job]["num_gpus"] == 1.0, asked[job]
