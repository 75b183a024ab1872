"""compute.precision: bf16 autocast of the forward (featurisation and training), fp32 kept where it is today."""

import numpy as np
import pytest
import torch

from elora_ray.config import ConfigError, load_config
from elora_ray.featurize.model_at_init import build_model_at_init
from elora_ray.featurize.stage import features_fingerprint
from elora_ray.featurize.worker import SampleFeaturizer
from elora_ray.models.classifier import TaskSpec
from elora_ray.models.precision import resolve_precision
from elora_ray.tasks.load import load_tasks
from elora_ray.train.jobs import AdapterJob
from elora_ray.train.loop import train_adapter, trainable_state

TASKS = [TaskSpec("sent", ("negative", "positive")), TaskSpec("nli", ("entailment", "neutral", "contradiction"))]
bf16_cpu = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no bf16 CPU kernels")


def _cfg(*sets: str):
    return load_config(None, ["model.name_or_path=tiny-bert", "model.max_length=16", *sets])


def test_precision_setting_is_validated_and_resolved():
    with pytest.raises(ConfigError, match="compute.precision"):
        _cfg("compute.precision=fp16")
    assert resolve_precision("auto", "cpu") == "fp32"  # CPU runs keep their fp32 results
    assert resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"


def test_native_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    """``native``: bf16 on a CPU whose flags say AVX512-BF16 or AMX, fp32 on one without; ``auto`` stays fp32 on
    CPUs either way. The plan says the same for this machine, and fp32 for a given (unknown) CPU shape."""
    from elora_ray.models import precision
    from elora_ray.plan.fit import NodeShape, _precision

    for flags, want in (({"avx2", "avx512f"}, "fp32"), ({"avx2", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16"), (set(), "fp32")):
        monkeypatch.setattr(precision, "cpu_flags", lambda f=flags: set(f))
        assert resolve_precision("native", "cpu") == want, flags
        assert resolve_precision("auto", "cpu") == "fp32"
        here = NodeShape(cpus=2, host_bytes=2**34, source="this machine")
        assert _precision(_cfg("compute.precision=native"), "cpu", here) == want
        assert _precision(_cfg("compute.precision=native"), "cpu", NodeShape(cpus=2, host_bytes=2**34)) == "fp32"
    assert features_fingerprint(_cfg("compute.precision=native"), "data") != features_fingerprint(_cfg(), "data")
    assert features_fingerprint(_cfg("compute.precision=native"), "data") != features_fingerprint(_cfg("compute.precision=bf16"), "data")


def test_cpu_flags_are_read_from_cpuinfo():
    from elora_ray.models.precision import cpu_flags

    flags = cpu_flags()
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        assert flags == set()
        return
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), None)
    assert flags == (set(line.split(":", 1)[1].split()) if line else set())


def test_fp32_and_auto_keep_the_fingerprints_bf16_changes_them():
    base = features_fingerprint(_cfg(), "data")
    assert features_fingerprint(_cfg("compute.precision=fp32"), "data") == base
    assert features_fingerprint(_cfg("compute.precision=auto", "compute.tf32=false"), "data") == base
    assert features_fingerprint(_cfg("compute.precision=bf16"), "data") != base
    job = AdapterJob(id="group-0", method="ensemble", tasks=["sent"])
    assert job.fingerprint(_cfg("compute.precision=fp32"), "d") == job.fingerprint(_cfg(), "d")
    assert job.fingerprint(_cfg("compute.precision=bf16"), "d") != job.fingerprint(_cfg(), "d")
    from elora_ray.federated.stage import _fingerprint as federated_fingerprint

    assert federated_fingerprint(_cfg("compute.precision=fp32")) == federated_fingerprint(_cfg())
    assert federated_fingerprint(_cfg("compute.precision=bf16")) != federated_fingerprint(_cfg())


@bf16_cpu
def test_bf16_featurisation_is_close_to_fp32_not_equal():
    specs = [{"name": t.name, "labels": list(t.labels)} for t in TASKS]
    batch = {"task": np.array(["sent", "nli", "sent", "nli"], dtype=object),
             "text": np.array(["a good film", "a man sleeps", "dull and long", "two dogs run"], dtype=object),
             "text_pair": np.array([None, "a person rests", None, "animals move"], dtype=object),
             "split": np.array(["train"] * 4, dtype=object), "sample_id": np.array(["0", "1", "2", "3"], dtype=object),
             "label": np.array(["positive", "neutral", "negative", "entailment"], dtype=object),
             "label_id": np.array([1, 1, 0, 0]), "shard": np.array([0] * 4)}
    out = {p: SampleFeaturizer(_cfg(f"compute.precision={p}", "featurize.dim=64").model_dump(mode="json"), specs, None,
                               "gradients")(dict(batch)) for p in ("fp32", "bf16")}
    a, b = out["fp32"]["grad"].astype(np.float64), out["bf16"]["grad"].astype(np.float64)
    assert a.dtype == b.dtype and a.shape == b.shape
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98, cos  # the same gradients up to bf16 rounding of the forward
    assert not np.array_equal(a, b)  # and the forward really ran in bf16
    np.testing.assert_allclose(out["bf16"]["h0"], out["fp32"]["h0"], atol=0.05)


@bf16_cpu
def test_bf16_training_learns_like_fp32():
    cfg = load_config(None, ["model.name_or_path=tiny-bert", "suite.samples_per_task=40", "suite.tasks_per_group=[1,1]"])
    tasks = load_tasks(cfg)
    rows = [(t.name, e) for t in tasks for e in t.splits["train"]]
    final = {}
    for precision in ("fp32", "bf16"):
        peft_model, model = build_model_at_init(cfg, [TaskSpec.of(t) for t in tasks], train_heads=True)
        stats = train_adapter(peft_model, model, {t.name: t for t in tasks}, rows, epochs=3, lr=5e-3, batch_size=8,
                              seed=0, precision=precision)
        assert np.mean(stats.losses[-3:]) < np.mean(stats.losses[:3])  # it learns
        final[precision] = trainable_state(peft_model)
        assert all(v.dtype == torch.float32 for v in final[precision].values())  # weights stay fp32
    assert any(not torch.equal(final["fp32"][k], final["bf16"][k]) for k in final["fp32"])


@bf16_cpu
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert"])
def test_class_logits_are_fp32_under_bf16_autocast(name):
    """Under bf16 autocast the backbone runs in bf16 but the class logits (task heads, a decoder's verbalizer
    rows of lm_head) come out of an fp32 projection of the same hidden state: not rounded to bf16, where two
    labels' logits tie exactly on ~1% of a decoder's predictions and argmax then always says the first label."""
    from elora_ray.config.sections import ModelConfig
    from elora_ray.models.build import build_classifier

    torch.manual_seed(0)
    model = build_classifier(ModelConfig(name_or_path=name, max_length=24), TASKS).eval()
    texts = ["good film", "a man sleeps", "the plot goes on", "bad", "a person rests", "fine", "so so", "great"]
    names = ["sent", "nli"] * 4
    b = model.tokenize(names, texts, [None, "a person rests"] * 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(**b)
        if name == "tiny-llama":
            hidden = model.last_hidden(b["input_ids"], b["attention_mask"]).double()
            rows = model.lm.lm_head.weight.double()[model.label_token_ids[b["task_index"]]]
            want = torch.einsum("bh,blh->bl", hidden, rows).masked_fill(~model.label_valid[b["task_index"]], float("-inf"))
        else:
            pooled = model.pooled(b["input_ids"], b["attention_mask"], b.get("token_type_ids")).double()
            want = torch.stack([torch.nn.functional.pad(
                torch.nn.functional.linear(pooled[i], model.heads[t].weight.double(), model.heads[t].bias.double()),
                (0, model.max_labels - model.heads[t].out_features), value=float("-inf"))
                for i, t in enumerate(b["task_index"].tolist())])
    assert logits.dtype == torch.float32
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(logits))
    torch.testing.assert_close(logits[finite].double(), want[finite], atol=1e-4, rtol=1e-5)
    rounded = logits[finite].bfloat16().float()
    assert not torch.equal(rounded, logits[finite])  # more precision than bf16 holds


@bf16_cpu
def test_exported_outputs_run_in_the_training_precision(tmp_path):
    """Exports (every adapter's logits on train/validation/test, the θ* reference's too) run under the
    same autocast as training: under bf16 the logits move by bf16 rounding, and the job record says so."""
    import json

    from elora_ray.pipeline import run_stages
    from elora_ray.train.runner import compute_outputs, export_job

    cfg = _cfg("suite.samples_per_task=24", "suite.tasks_per_group=[1,1]", "compute.precision=bf16")
    out = tmp_path / "run"
    run_stages(cfg, out, until="prepare")
    tasks = load_tasks(cfg)
    specs = [TaskSpec.of(t) for t in tasks]
    peft_model, model = build_model_at_init(cfg, specs, None, "cpu")
    want = {"validation": [t.name for t in tasks]}
    a = compute_outputs(peft_model, model, tasks, want, precision="fp32").column("logits").to_pylist()
    b = compute_outputs(peft_model, model, tasks, want, precision="bf16").column("logits").to_pylist()
    a, b = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    assert not np.array_equal(a, b) and np.allclose(a, b, atol=0.1)
    job = AdapterJob(id="ref", method="reference", tasks=[t.name for t in tasks], output_tasks=want, kind="reference")
    record = export_job(cfg, out, job, None, {}, "fp", 0.0, built=(peft_model, model))
    assert record["export"]["precision"] == "bf16"
    assert json.loads((out / "train" / "jobs" / "ref.json").read_text())["export"]["precision"] == "bf16"


def test_models_load_in_bf16_only_on_gpus_that_have_it_natively(monkeypatch):
    """model.dtype auto: bf16 weights (and bf16 compute for 4-bit layers, bf16 autocast) on GPUs with
    compute capability ≥ 8; fp32 on CPUs and on T4/V100, where torch "supports" bf16 by emulation."""
    from elora_ray.config import ModelConfig
    from elora_ray.models.build import compute_dtype_for
    from elora_ray.models.precision import model_fingerprint, resolve_model_dtype

    assert resolve_model_dtype("auto", "cpu") == torch.float32 and compute_dtype_for("cpu") == torch.float32
    assert resolve_model_dtype("bfloat16", "cpu") == torch.bfloat16  # explicit: as given
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for capability, native in (((8, 0), True), ((9, 0), True), ((7, 5), False), ((7, 0), False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0, c=capability: c)
        want = torch.bfloat16 if native else torch.float32
        assert resolve_model_dtype("auto", "cuda") == want and compute_dtype_for("cuda") == want, capability
        assert resolve_precision("auto", "cuda") == ("bf16" if native else "fp32"), capability
    # auto counts as float32 in fingerprints: runs made before the setting existed stay current
    assert model_fingerprint(ModelConfig()) == model_fingerprint(ModelConfig(dtype="float32"))
    assert model_fingerprint(ModelConfig(dtype="bfloat16")) != model_fingerprint(ModelConfig())
    assert features_fingerprint(_cfg(), "x") == features_fingerprint(_cfg("model.dtype=float32"), "x")


@bf16_cpu
def test_the_probes_pooled_features_run_in_the_compute_precision():
    """The linear probe's inputs (pooled encoder features) come from a forward under the same autocast
    as featurisation and training: bf16-rounded under bf16, exact fp32 otherwise."""
    specs = [{"name": t.name, "labels": list(t.labels)} for t in TASKS]
    batch = {"task": np.array(["sent", "nli"], dtype=object), "text": np.array(["a fine film", "it rains"], dtype=object),
             "split": np.array(["train"] * 2, dtype=object), "sample_id": np.array(["0", "1"], dtype=object),
             "label": np.array(["positive", "neutral"], dtype=object), "label_id": np.array([1, 1]), "shard": np.array([0, 0])}
    out = {p: SampleFeaturizer(_cfg(f"compute.precision={p}").model_dump(mode="json"), specs, None, "pooled")(dict(batch))
           for p in ("fp32", "bf16")}
    a, b = out["fp32"]["pooled"], out["bf16"]["pooled"]
    assert not np.array_equal(a, b) and np.allclose(a, b, atol=0.1)


def _autocast_probe(module: torch.nn.Module) -> list:
    """A forward hook on ``module`` recording, for each call, whether CPU autocast was on and its dtype."""
    seen: list = []
    module.register_forward_hook(lambda *_: seen.append(
        (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)))
    return seen


@pytest.mark.parametrize("precision", [pytest.param("bf16", marks=bf16_cpu), "fp32"])
def test_federated_clients_train_and_evaluate_in_the_compute_precision(tmp_path, precision):
    """Every forward of a federated client worker (local training step, evaluation, featurisation and the
    combination weights' logits) and of the Ray Train engine's local steps runs under the autocast that
    training uses: bf16 with compute.precision=bf16, none with fp32."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from elora_ray.federated.clients import WINDOW_SCHEMA
    from elora_ray.federated.model import build_lm, train_windows, window_logits
    from elora_ray.federated.worker import ClientWorker

    rng = np.random.default_rng(0)
    rows = [{"client": c, "split": s, "sample_id": f"{c}/{s}/{i}", "input_ids": rng.integers(3, 200, 8).tolist(),
             "target": int(rng.integers(3, 200))}
            for c in ("a", "b") for s, n in (("train", 4), ("validation", 2), ("test", 2)) for i in range(n)]
    path = tmp_path / "windows.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=WINDOW_SCHEMA), path)
    cfg = load_config(None, ["model.name_or_path=tiny-llama", "adapter.rank=2", "featurize.dim=16",
                             "federated.batch_size=4", "federated.featurize_windows=2", f"compute.precision={precision}"])
    worker = ClientWorker(cfg.model_dump(mode="json"), str(path))
    seen = _autocast_probe(worker.peft_model.base_model.model.lm)
    want = (True, torch.bfloat16) if precision == "bf16" else (False, None)
    theta = worker.theta_star
    calls = {
        "update": lambda: worker.update("a", theta, 1.0, 1e-3, 0),
        "evaluate": lambda: worker.evaluate(["a", "b"], "test", [(1.0, theta)]),
        "featurize": lambda: worker.featurize(["a"]),
        "fit_weights": lambda: worker.fit_weights(["a", "b"], [[(1.0, theta)], [(0.5, theta)]], 0),
    }
    for name, call in calls.items():
        seen.clear()
        call()
        assert seen and set(seen) == {want}, (name, seen)
    # the Ray Train engine's workers and anything else calling the model's helpers directly
    peft_model, _ = build_lm(cfg)
    seen = _autocast_probe(peft_model.base_model.model.lm)
    x = rng.integers(3, 200, size=(4, 8))
    train_windows(peft_model, x, x, epochs=1.0, lr=1e-3, batch_size=4, seed=0, precision=precision)
    window_logits(peft_model, x, precision=precision)
    assert seen and set(seen) == {want}, seen


def test_bf16_on_a_cpu_uses_plain_attention_for_small_batches_only():
    """The fused CPU attention's bf16 backward is slow: a bf16 CPU forward of at most PLAIN_ATTENTION_MAX_SCORES
    batch × length² runs the model's attention eagerly (same loss); larger ones, fp32, no size and a model under
    gradient checkpointing keep sdpa, and the model is back on sdpa afterwards."""
    import torch
    from transformers import BertConfig, BertModel

    from elora_ray.models.precision import PLAIN_ATTENTION_MAX_SCORES, attention_scores, autocast

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, attn_implementation="sdpa")).eval()  # no dropout
    ids = torch.randint(0, 100, (4, 12))
    small = attention_scores({"input_ids": ids})
    assert small == 4 * 12**2 and attention_scores({"features": torch.zeros(3)}) is None
    assert attention_scores({"input_ids": torch.zeros(16, 128, dtype=torch.long)}) == PLAIN_ATTENTION_MAX_SCORES

    def run(precision, scores):
        seen = []
        hook = model.encoder.layer[0].attention.self.register_forward_hook(
            lambda m, i, o: seen.append(m.config._attn_implementation))
        try:
            with autocast(precision, "cpu", scores, model):
                out = model(input_ids=ids).last_hidden_state
        finally:
            hook.remove()
        assert model.config._attn_implementation == "sdpa"
        return seen[0], out

    impl, plain = run("bf16", small)
    assert impl == "eager"
    impl, fused = run("bf16", None)
    assert impl == "sdpa" and torch.allclose(plain.float(), fused.float(), atol=3e-2)
    assert run("bf16", PLAIN_ATTENTION_MAX_SCORES + 1)[0] == "sdpa"
    assert run("fp32", small)[0] == "sdpa"
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert run("bf16", small)[0] == "sdpa"
