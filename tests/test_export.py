"""`elora export`: a finished run's ensemble as plain PEFT adapters (+ heads, weights, a loader), loaded in a
Python that imports torch, transformers, peft and safetensors only, must give the ensemble's logits exactly
as :class:`EnsemblePredictor` computes them.

The tiny-bert run of the session (``tiny_pipeline``) is exported as it is. The other adapter types (LoRA and
QLoRA on tiny-llama, QLoRA, MPLoRA and the bottleneck adapter on tiny-bert) are exported from small runs whose
adapters are written by elora_ray's own attach/save functions with perturbed weights (no training: the export
only converts, and nonzero LoRA B and heads make every term of the formula count); the real tiny-llama
pipeline runs in the slow test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from elora_ray.cli import main

TEXTS = ["a warm and funny film", "cold, bland food and slow service", "the battery dies by noon, great",
         "an utterly " + "long " * 200 + "review"]
PAIRS = ["a second text", None, "another second text", "and one more"]

# Runs in a fresh interpreter: elora_ray is made unimportable for the standard exports (sys.modules[...] = None
# makes any `import elora_ray` fail); decoders are also computed by hand with plain PEFT as the export's README
# shows, independently of load_ensemble.py. Exports of elora_ray's own PEFT method come last, with it allowed.
PLAIN = r'''
import json, sys
jobs = json.load(open(sys.argv[1]))
sys.modules["elora_ray"] = None
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

def by_hand(export, task, texts, pairs):
    spec = json.load(open(f"{export}/ensemble.json"))
    m = spec["model"]
    tok = AutoTokenizer.from_pretrained(m["base_model_path"])
    enc = lambda s: tok.encode(s, add_special_tokens=False)
    z = 0
    for adapter, c in spec["tasks"][task]["coefficients"].items():
        dtype = lambda name: torch.float32 if name == "auto" else getattr(torch, name)  # auto: float32 on a CPU
        kw = {"dtype": dtype(m["dtype"])}
        if m["quantization"]:
            q = m["quantization"]
            kw["quantization_config"] = BitsAndBytesConfig(**{**q, "bnb_4bit_compute_dtype": dtype(q["bnb_4bit_compute_dtype"])})
        base = AutoModelForCausalLM.from_pretrained(m["base_model_path"], **kw)
        for mod in base.modules():  # keep bitsandbytes' 4-bit CPU weights unpacked, as the run did
            if type(mod).__name__ == "Linear4bit":
                mod.support_avx512bf16_for_cpu = False
        model = PeftModel.from_pretrained(base, f"{export}/adapters/{adapter}").eval()
        rows = []
        for text, pair in zip(texts, pairs):
            ids = enc(text) + (enc("\n") + enc(pair) if pair else []) + enc("\nAnswer:")
            with torch.no_grad():
                rows.append(model(input_ids=torch.tensor([ids])).logits[0, -1][m["label_token_ids"][task]])
        z = z + c * torch.stack(rows).double()
    return z.tolist()

out = {}
for job in sorted(jobs, key=lambda j: not j["standard"]):
    if not job["standard"]:
        del sys.modules["elora_ray"]
    sys.path.insert(0, job["export"])
    sys.modules.pop("load_ensemble", None)
    from load_ensemble import load_ensemble
    ens = load_ensemble(job["export"])
    res = {"single": {t: ens.logits(t, job["texts"]).tolist() for t in ens.tasks()},
           "pairs": {t: ens.logits(t, job["texts"], job["pairs"]).tolist() for t in ens.tasks()}}
    if ens.kind == "decoder":
        task = ens.tasks()[0]
        res["by_hand"] = {task: by_hand(job["export"], task, job["texts"][:2], job["pairs"][:2])}
    sys.path.remove(job["export"])
    out[job["name"]] = res
    if job["standard"]:
        assert not any(k.startswith("elora_ray.") for k in sys.modules), "elora_ray was imported"
print("RESULT " + json.dumps(out))
'''


def _plain_python(tmp_path: Path, jobs: list[dict]) -> dict:
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "plain.py").write_text(PLAIN)
    # one thread: two threads on 2 shared, busy cores make every small matmul wait for the other (100x slower)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(tmp_path / "plain.py"), str(tmp_path / "jobs.json")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


def _expected(run: Path) -> dict:
    import torch

    from elora_ray.ensemble.predictor import EnsemblePredictor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in _plain_python
    try:
        p = EnsemblePredictor(run)
        return {"single": {t: p.predict_logits(t, TEXTS) for t in p.tasks},
                "pairs": {t: p.predict_logits(t, TEXTS, PAIRS) for t in p.tasks}}
    finally:
        torch.set_num_threads(threads)


def _export(run: Path, to: Path, capsys, *extra: str) -> str:
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--to", str(to), *extra]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def _assert_match(name: str, want: dict, got: dict) -> None:
    for mode in ("single", "pairs"):
        assert set(got[mode]) == set(want[mode])
        for task, z in want[mode].items():
            np.testing.assert_allclose(np.array(got[mode][task]), z, atol=1e-4, rtol=0, err_msg=f"{name} {mode} {task}")
    for task, z in got.get("by_hand", {}).items():
        np.testing.assert_allclose(np.array(z), want["pairs"][task][:2], atol=1e-4, rtol=0, err_msg=f"{name} by hand")


def _synthetic_run(src: Path, dst: Path, sets: list[str]) -> Path:
    """A finished run with the data of ``src`` and freshly attached, perturbed adapters of ``sets``'s model and type:
    two groups, a boosting learner on group 0 measured from θ*, every task weighting both groups."""
    import torch

    from elora_ray.adapters import attach_adapter, needs_quantized_base, save_adapter
    from elora_ray.artifacts import read_prepared
    from elora_ray.config import dump_config, load_config
    from elora_ray.ensemble.members import EnsembleMembers, GroupMembers, Learner, save_members, save_weights
    from elora_ray.layout import RunLayout
    from elora_ray.models.build import build_classifier
    from elora_ray.models.classifier import TaskSpec

    cfg = load_config(None, ["suite.samples_per_task=48", *sets])
    shutil.copytree(src / "data", dst / "data")
    (dst / "config.yaml").write_text(dump_config(cfg))
    specs = [TaskSpec.of(t) for t in read_prepared(dst)]
    names = [s.name for s in specs]
    for k, job in enumerate(["group-0", "group-1", "boost-0", "theta_star"]):
        model = build_classifier(cfg.model, specs, quantize=needs_quantized_base(cfg.adapter), seed=cfg.seed)
        peft_model = attach_adapter(model, cfg.adapter, seed=k)
        gen = torch.Generator().manual_seed(100 + k)
        with torch.no_grad():
            for _, p in peft_model.named_parameters():
                if p.requires_grad:
                    p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        save_adapter(peft_model, cfg.adapter, RunLayout(dst).adapter(job), extra={"job": {"id": job}})
    groups = [names[:2], names[2:]]
    save_members(dst, EnsembleMembers([GroupMembers(groups[0], "group-0", [Learner("boost-0", 0.7, 0)]),
                                       GroupMembers(groups[1], "group-1")]))
    save_weights(dst, {"method": "learned", "groups": groups,
                       "tasks": {n: {"own_group": int(i >= 2), "weights": [0.65, 0.35] if i < 2 else [0.25, 0.75]}
                                 for i, n in enumerate(names)}})
    return dst


SYNTHETIC = {
    "decoder-lora": ["model.name_or_path=tiny-llama", "adapter.type=lora"],
    "decoder-qlora": ["model.name_or_path=tiny-llama", "adapter.type=qlora"],
    "encoder-qlora": ["model.name_or_path=tiny-bert", "adapter.type=qlora"],
    "encoder-mplora": ["model.name_or_path=tiny-bert", "adapter.type=mplora"],
    "encoder-adapter": ["model.name_or_path=tiny-bert", "adapter.type=adapter"],
}


def test_exports_load_without_elora_ray_and_match_the_predictor(tiny_pipeline, tmp_path, capsys):
    _, run, _ = tiny_pipeline
    jobs, expected = [], {}
    out = _export(run, tmp_path / "exports" / "pipeline", capsys)
    assert "standard PEFT adapters" in out and "needs elora_ray" not in out
    jobs.append({"name": "pipeline", "export": str(tmp_path / "exports" / "pipeline"), "standard": True})
    expected["pipeline"] = _expected(run)
    for name, sets in SYNTHETIC.items():
        syn = _synthetic_run(run, tmp_path / "runs" / name, sets)
        out = _export(syn, tmp_path / "exports" / name, capsys)
        standard = not name.endswith("-adapter")
        assert ("needs elora_ray" in out) == (not standard), out
        jobs.append({"name": name, "export": str(tmp_path / "exports" / name), "standard": standard})
        expected[name] = _expected(syn)
    for job in jobs:
        job.update(texts=TEXTS, pairs=PAIRS)
    got = _plain_python(tmp_path, jobs)
    for name, want in expected.items():
        _assert_match(name, want, got[name])
    assert set(got["decoder-lora"]["by_hand"]) and set(got["decoder-qlora"]["by_hand"])

    # what the export holds: renamed keys, plain-base configs, heads, the formula's terms
    exp = tmp_path / "exports" / "pipeline"
    spec = json.loads((exp / "ensemble.json").read_text())
    from elora_ray.ensemble.members import load_members

    members = load_members(run)
    assert members.boosting_steps and spec["adapters"] == [*members.job_ids, "theta_star"]
    assert spec["reference"] == "theta_star" and spec["model"]["kind"] == "encoder"
    from safetensors.torch import load_file

    for a in spec["adapters"]:
        cfg = json.loads((exp / "adapters" / a / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == spec["model"]["base_model_path"]
        assert cfg["modules_to_save"] is None and cfg["auto_mapping"] is None and cfg["peft_type"] == "LORA"
        keys = load_file(str(exp / "adapters" / a / "adapter_model.safetensors"))
        assert all(k.startswith("base_model.model.encoder.layer.") for k in keys), sorted(keys)[:3]
        assert set(load_file(str(exp / "adapters" / a / "heads.safetensors"))) == \
            {f"{t}.{p}" for t in spec["tasks"] for p in ("weight", "bias")}
    dec = json.loads((tmp_path / "exports" / "decoder-lora" / "ensemble.json").read_text())
    keys = load_file(str(tmp_path / "exports" / "decoder-lora" / "adapters" / "group-0" / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.model.layers.") for k in keys), sorted(keys)[:3]
    assert dec["tasks"][dec["groups"][0]["tasks"][0]]["coefficients"] == pytest.approx(
        {"group-0": 0.65, "boost-0": 0.65 * 0.7, "theta_star": -0.65 * 0.7, "group-1": 0.35})
    readme = (tmp_path / "exports" / "decoder-lora" / "README.md").read_text()
    assert "\\nAnswer:" in readme and "PeftModel.from_pretrained" in readme
    assert "needs elora_ray" in (tmp_path / "exports" / "encoder-adapter" / "README.md").read_text()


def test_export_refuses_unfinished_runs_and_existing_targets(tiny_pipeline, tmp_path, capsys, copy_run):
    _, run, _ = tiny_pipeline
    partial = copy_run(run, "partial", ignore=("ray_train", "outputs", "tensorboard", "features"))
    (partial / "ensemble" / "weights.json").unlink()
    capsys.readouterr()
    assert main(["export", "--run", str(partial), "--to", str(tmp_path / "x")]) == 2
    assert "not a finished run" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["export", "--run", str(tmp_path / "nothing"), "--to", str(tmp_path / "x")]) == 2
    assert "not an elora run directory" in capsys.readouterr().err

    target = tmp_path / "exported"
    target.mkdir()
    (target / "old").write_text("")
    assert main(["export", "--run", str(run), "--to", str(target)]) == 2
    assert "--force" in capsys.readouterr().err and (target / "old").exists()
    assert main(["export", "--run", str(run), "--to", str(run.parent)]) == 2
    assert "holds it" in capsys.readouterr().err

    broken = copy_run(run, "broken", ignore=("ray_train", "outputs", "tensorboard"))
    (broken / "adapters" / "boost-1" / "adapter_model.safetensors").unlink()
    assert main(["export", "--run", str(broken), "--to", str(target), "--force"]) == 2
    assert "boost-1" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left over
    assert (target / "old").exists()  # a failed export leaves the old directory as it was

    _export(run, target, capsys, "--force")
    assert not (target / "old").exists() and (target / "ensemble.json").is_file()


@pytest.mark.slow
def test_export_of_a_tiny_llama_pipeline_matches_the_predictor(tmp_path, capsys):
    from conftest import TINY

    sets = [s for s in TINY if not s.startswith(("model.", "train.epochs", "boost.steps"))] + [
        "model.name_or_path=tiny-llama", "train.epochs=1", "boost.steps=1", "baselines.methods=[]"]
    run = tmp_path / "run"
    assert main(["run", "--out", str(run), *[a for s in sets for a in ("--set", s)]]) == 0
    _export(run, tmp_path / "export", capsys)
    got = _plain_python(tmp_path, [{"name": "run", "export": str(tmp_path / "export"), "standard": True,
                                    "texts": TEXTS, "pairs": PAIRS}])
    _assert_match("tiny-llama pipeline", _expected(run), got["run"])
