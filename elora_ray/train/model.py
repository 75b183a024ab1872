"""Build the model a job trains or evaluates: θ* (probed heads, seeded adapter init), the job's
adapter type, optionally warm-started from another job's adapter; load/save trainable state.

Task heads are always part of the saved adapter (PEFT ``modules_to_save``) so every adapter
directory is self-contained; ``train_heads=False`` only freezes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ..artifacts import heads_path
from ..config import RunConfig
from ..errors import ModelError
from ..featurize.model_at_init import build_model_at_init
from ..layout import RunLayout
from ..models.classifier import TaskSpec
from .jobs import AdapterJob


def job_config(cfg: RunConfig, job: AdapterJob) -> RunConfig:
    """``cfg`` with the job's adapter type (e.g. the QLoRA baseline on a LoRA run)."""
    if job.adapter_type is None or job.adapter_type == cfg.adapter.type:
        return cfg
    return cfg.model_copy(update={"adapter": cfg.adapter.model_copy(update={"type": job.adapter_type})})


def freeze_heads(peft_model: torch.nn.Module) -> None:
    for name, p in peft_model.named_parameters():
        if ".heads." in f".{name}":
            p.requires_grad_(False)


def build_job_model(
    cfg: RunConfig, job: AdapterJob, run_dir: Path, specs: Sequence[TaskSpec], device: str | torch.device = "cpu"
):
    """(peft_model, classifier) ready to train ``job`` (eval mode; trainable flags set)."""
    jcfg = job_config(cfg, job)
    peft_model, model = build_model_at_init(jcfg, specs, heads_path(run_dir), device, train_heads=True)
    if job.init_from is not None:
        load_adapter_weights(peft_model, RunLayout(run_dir).adapter(job.init_from))
    train_heads = cfg.train.train_heads if job.train_heads is None else job.train_heads
    if not train_heads:
        freeze_heads(peft_model)
    return peft_model, model


def load_adapter_weights(peft_model, directory: Path, adapter_name: str = "default") -> None:
    """Load a saved adapter's weights (safetensors) into ``peft_model``'s adapter ``adapter_name``."""
    f = Path(directory) / "adapter_model.safetensors"
    if not f.is_file():
        raise ModelError(f"{directory}: adapter_model.safetensors not found")
    result = set_peft_model_state_dict(peft_model, load_file(str(f)), adapter_name=adapter_name)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k or "bottleneck" in k or "heads" in k]
    if missing:
        raise ModelError(f"{directory}: weights do not fit the model (unexpected keys such as {missing[:3]})")


def save_training_state(directory: Path, peft_model, optimizer, loop_state: dict) -> None:
    """Checkpoint contents: trainable tensors + AdamW state in safetensors, counters in JSON."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in peft_model.named_parameters() if p.requires_grad}
    # optimizer=None: a DeepSpeed run, whose ZeRO-sharded AdamW state stays with the engine
    # (it would only be written as pickles); a resumed DeepSpeed run restarts the moments.
    opt = optimizer.state_dict() if optimizer is not None else {"state": {}, "param_groups": []}
    for idx, st in opt["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt/{idx}/{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
    # the CPU generator drives dropout in the (frozen) backbone: a resumed run must continue
    # from the same random stream to reproduce an uninterrupted one exactly
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(directory / "state.safetensors"))
    meta = {"loop": loop_state, "param_groups": opt["param_groups"]}
    (directory / "state.json").write_text(json.dumps(meta, indent=1))


def restore_rng(directory: Path) -> bool:
    """Set torch's random generators to a checkpoint's (call right before training resumes)."""
    tensors = load_file(str(Path(directory) / "state.safetensors"))
    if "rng/torch" not in tensors:
        return False
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
    return True


def load_training_state(directory: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(trainable params by name, optimizer state dict, loop counters) from a checkpoint."""
    tensors = load_file(str(Path(directory) / "state.safetensors"))
    meta = json.loads((Path(directory) / "state.json").read_text())
    params = {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, idx, key = k.split("/", 2)
            state.setdefault(int(idx), {})[key] = v
    opt_state = {"state": state, "param_groups": meta["param_groups"]} if state else {}
    return params, opt_state, meta["loop"]
