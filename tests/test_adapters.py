"""Every adapter type behind one interface: init = base, gradients, save/load, MPLoRA maths."""

import json

import pytest
import torch

from elora_ray.adapters import (
    adapter_parameters,
    attach_adapter,
    count_parameters,
    load_adapter,
    orthogonality_loss,
    regularization_loss,
    save_adapter,
)
from elora_ray.adapters.mplora import path_blocks
from elora_ray.config import AdapterConfig, ModelConfig
from elora_ray.errors import ModelError
from elora_ray.models.build import build_classifier
from elora_ray.models.classifier import TaskSpec

TASKS = [TaskSpec("sent", ("negative", "positive")), TaskSpec("topic", ("science", "sports", "art"))]
TEXTS = (["sent", "topic", "sent", "topic"], ["a fine film", "the match ended", "awful plot", "a new molecule"])
LABELS = torch.tensor([1, 1, 0, 0])
TYPES = ["lora", "qlora", "adapter", "qadapter", "mplora"]


def build(model: str, adapter_type: str):
    quant = adapter_type in ("qlora", "qadapter")
    return build_classifier(ModelConfig(name_or_path=model, max_length=16), TASKS, quantize=quant)


def sgd_step(model, cfg):
    batch = model.base_model.model.tokenize(*TEXTS) if hasattr(model.base_model, "model") else None
    logits = model(**batch)
    loss = torch.nn.functional.cross_entropy(logits, LABELS)
    reg = regularization_loss(model, cfg)
    if reg is not None:
        loss = loss + reg
    loss.backward()
    with torch.no_grad():
        for _, p in adapter_parameters(model, include_heads=True):
            p -= 0.5 * p.grad
            p.grad = None
    return batch


@pytest.mark.parametrize("model_name", ["tiny-bert", "tiny-llama"])
@pytest.mark.parametrize("adapter_type", TYPES)
def test_adapter_round_trip(tmp_path, model_name, adapter_type):
    cfg = AdapterConfig(type=adapter_type, rank=4, reduction_factor=8, paths=2)
    base = build(model_name, adapter_type)
    batch = base.tokenize(*TEXTS)
    with torch.no_grad():
        before = base(**batch)
    model = attach_adapter(base, cfg, seed=0)
    with torch.no_grad():  # adapters start as the identity: θ* is the base model
        torch.testing.assert_close(model(**batch), before, rtol=0, atol=0)

    # only adapter (+ head) parameters are trainable, and the backbone stays frozen
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(("lora_" in n or "bottleneck_" in n or ".heads." in n) for n in trainable)

    sgd_step(model, cfg)
    with torch.no_grad():
        after = model(**batch)
    assert not torch.allclose(after, before)

    save_adapter(model, cfg, tmp_path / "ad")
    files = sorted(p.name for p in (tmp_path / "ad").iterdir())
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert json.loads((tmp_path / "ad" / "elora_adapter.json").read_text())["adapter"]["type"] == adapter_type

    reloaded = load_adapter(build(model_name, adapter_type), tmp_path / "ad")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch), after)


def test_mplora_same_parameter_count_as_lora():
    lora = attach_adapter(build("tiny-bert", "lora"), AdapterConfig(type="lora", rank=8))
    mp = attach_adapter(build("tiny-bert", "mplora"), AdapterConfig(type="mplora", rank=8, paths=4))
    assert count_parameters(lora) == count_parameters(mp) > 0


def test_mplora_forward_is_concat_of_paths_and_orth_loss_matches_definition():
    cfg = AdapterConfig(type="mplora", rank=4, paths=4, alpha=4)
    model = attach_adapter(build("tiny-bert", "mplora"), cfg)
    torch.manual_seed(1)
    layer = model.base_model.model.backbone.encoder.layer[0].attention.self.query
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "lora_B") and "default" in getattr(m, "lora_B", {}):
                m.lora_B["default"].weight.normal_()
    # forward: h = W x + concat_i(B_i A x) * scaling, computed path by path
    x = torch.randn(5, layer.in_features)
    A = layer.lora_A["default"].weight
    blocks = path_blocks(layer.lora_B["default"].weight, 4)
    manual = layer.base_layer(x) + torch.cat([(x @ A.T) @ Bi.T for Bi in blocks], dim=-1) * layer.scaling["default"]
    torch.testing.assert_close(layer(x), manual)
    # orthogonality: Σ_layers Σ_{i<j} ||B_i^T B_j||_F^2 with explicit loops in float64
    expected = 0.0
    for m in model.modules():
        if hasattr(m, "lora_B") and "default" in getattr(m, "lora_B", {}):
            B = m.lora_B["default"].weight.detach().double()
            h = B.shape[0] // 4
            for i in range(4):
                for j in range(i + 1, 4):
                    Bi, Bj = B[i * h : (i + 1) * h], B[j * h : (j + 1) * h]
                    expected += float(sum((Bi[:, a] @ Bj[:, b]) ** 2 for a in range(4) for b in range(4)))
    got = orthogonality_loss(model, 4)
    assert abs(float(got) - expected) < 1e-6 * max(1.0, expected)
    torch.testing.assert_close(regularization_loss(model, cfg), cfg.orth_lambda * got)


def test_orthogonality_loss_is_zero_for_orthogonal_paths():
    model = attach_adapter(build("tiny-bert", "mplora"), AdapterConfig(type="mplora", rank=2, paths=2))
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "lora_B") and "default" in getattr(m, "lora_B", {}):
                W = m.lora_B["default"].weight
                W.zero_()
                half = W.shape[0] // 2
                W[0, 0] = 1.0  # path 1 only uses column 0
                W[half + 1, 1] = 1.0  # rows of B_1 and B_2 never meet: B_1^T B_2 = 0
    assert float(orthogonality_loss(model, 2)) == 0.0


def test_mplora_paths_must_divide_the_output_size():
    with pytest.raises(ModelError, match="not divisible"):
        attach_adapter(build("tiny-bert", "mplora"), AdapterConfig(type="mplora", paths=3))


def test_only_mplora_has_a_regularizer():
    model = attach_adapter(build("tiny-bert", "lora"), AdapterConfig(type="lora"))
    assert regularization_loss(model, AdapterConfig(type="lora")) is None


def test_quantized_types_require_a_quantized_base():
    with pytest.raises(ModelError, match="4-bit base"):
        attach_adapter(build("tiny-bert", "lora"), AdapterConfig(type="qlora"))


def test_load_rejects_other_tasks_and_missing_safetensors(tmp_path):
    cfg = AdapterConfig(type="lora")
    model = attach_adapter(build("tiny-bert", "lora"), cfg)
    save_adapter(model, cfg, tmp_path / "ad")
    other = build_classifier(ModelConfig(name_or_path="tiny-bert"), [TaskSpec("x", ("a", "b"))])
    with pytest.raises(ModelError, match="trained for tasks"):
        load_adapter(other, tmp_path / "ad")
    (tmp_path / "ad" / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelError, match="only safetensors"):
        load_adapter(build("tiny-bert", "lora"), tmp_path / "ad")


def test_qlora_gradients_match_a_dequantized_float_model():
    """QLoRA grads equal LoRA grads on a float copy holding the dequantized 4-bit weights.

    Guards against bitsandbytes' CPU repacking path, whose kernel has no autograd formula.
    """
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    q = build("tiny-llama", "qlora")
    batch = q.tokenize(*TEXTS)
    with torch.no_grad():  # an eval-mode no-grad pass is what used to trigger the repacking
        q(**batch)
    ref = build_classifier(ModelConfig(name_or_path="tiny-llama", max_length=16), TASKS)
    with torch.no_grad():
        for (name, m), (_, r) in zip(q.named_modules(), ref.named_modules()):
            if isinstance(m, bnb.nn.Linear4bit):
                r.weight.copy_(bf.dequantize_4bit(m.weight.data, m.weight.quant_state))
    grads = []
    for model, adapter_type in ((q, "qlora"), (ref, "lora")):
        pm = attach_adapter(model, AdapterConfig(type=adapter_type, rank=4), seed=0)
        with torch.no_grad():  # make A matter too: nonzero B
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.linspace(-0.1, 0.1, p.numel()).reshape(p.shape))
        torch.nn.functional.cross_entropy(pm(**batch), LABELS).backward()
        grads.append({n: p.grad.clone() for n, p in adapter_parameters(pm)})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def test_bottleneck_placement_and_parameter_count():
    """Houlsby placement on BERT: attention-output and FFN-output dense only; 2·d·b + b + d each."""
    model = attach_adapter(build("tiny-bert", "adapter"), AdapterConfig(type="adapter", reduction_factor=8))
    wrapped = sorted(n for n, m in model.named_modules() if type(m).__name__ == "BottleneckLinear")
    assert wrapped == [f"base_model.model.backbone.encoder.layer.{i}.{p}" for i in (0, 1) for p in ("attention.output.dense", "output.dense")]
    d, b = 64, 64 // 8
    assert count_parameters(model) == len(wrapped) * (2 * d * b + b + d)


@pytest.mark.parametrize("model_name", ["tiny-bert", "tiny-llama"])
def test_peft_sees_a_4bit_base_and_merges_it_correctly(model_name):
    """PEFT must wrap 4-bit layers in its bitsandbytes-aware LoRA layer: its generic layer would
    'merge' a float delta into packed 4-bit bytes. The merged layer must equal base + B A."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf
    from peft.tuners.lora.bnb import Linear4bit as PeftLinear4bit

    cfg = AdapterConfig(type="qlora", rank=2)
    model = attach_adapter(build_classifier(ModelConfig(name_or_path=model_name, max_length=16), TASKS, quantize=True), cfg)
    wrapped = [m for m in model.modules() if hasattr(m, "lora_A") and isinstance(getattr(m, "base_layer", None), bnb.nn.Linear4bit)]
    assert wrapped, "no LoRA layer over a 4-bit base"
    assert all(isinstance(m, PeftLinear4bit) for m in wrapped), {type(m).__name__ for m in wrapped}
    layer = wrapped[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.5)
    w = layer.base_layer.weight
    before = bf.dequantize_4bit(w.data, w.quant_state).float()
    delta = layer.get_delta_weight("default").float()
    layer.merge()
    w = layer.base_layer.weight
    after = bf.dequantize_4bit(w.data, w.quant_state).float()
    # requantising costs 4-bit precision, never the delta itself
    err = (after - (before + delta)).abs().mean() / delta.abs().mean()
    assert err < 0.5, float(err)


def test_a_cpu_4bit_model_lets_go_of_its_float_file_once_loaded():
    """Quantising on the CPU reads the float file through a memory mapping; the float tensors that stay
    (embeddings, norms) were views of it, which kept every page read resident (the process held the
    file's full float size on top of its 4-bit weights). After loading, no tensor maps the file."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import gc, psutil
        from elora_ray.config import load_config
        from elora_ray.models.build import build_classifier
        from elora_ray.models.classifier import TaskSpec
        cfg = load_config(None, ["model.name_or_path=tiny-llama", "adapter.type=qlora"])
        model = build_classifier(cfg.model, [TaskSpec("t", ("a", "b"), {"a": "no", "b": "yes"})], quantize=True,
                                 quant_type="nf4", seed=0, device="cpu")
        gc.collect()
        maps = [m.path for m in psutil.Process().memory_maps() if m.path.endswith(".safetensors")]
        assert sum(p.numel() for p in model.parameters()) > 0
        print("MAPPED", maps)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "MAPPED []" in out.stdout, out.stdout
