"""Load an elora_ray ensemble export and compute its per-task logits.

Needs only torch, transformers, peft and safetensors (and bitsandbytes for a 4-bit base) — not
elora_ray, except for adapter types PEFT lacks (bottleneck adapters). Copy this file anywhere::

    from load_ensemble import load_ensemble

    ens = load_ensemble("path/to/export")                 # base model: ensemble.json's model.base_model_path
    ens = load_ensemble("path/to/export", base_model="/my/copy/of/the/base")
    ens.logits("task", ["some text", ...])                # [N, C] tensor, columns = ens.labels("task")
    ens.logits("task", ["premise"], text_pairs=["hypothesis"])
    ens.predict("task", ["some text"])                    # one label per text
    ens.adapter_logits("task", "group-0", ["some text"])  # one adapter's logits

The ensemble's logits for task i are (ensemble.json: ``formula``, ``tasks[i].coefficients``)::

    z_i(s) = sum_j alpha_ij * [ z_base_j(s) + sum_t c_jt * (z_jt(s) - z_ref(s)) ]
           = sum over adapters a of coefficients[a] * z_a(s)

where z_a(s) is one adapter's class logits: encoders pool the last hidden state (``model.pooling``:
mean over real tokens, or the first token) and apply the task's linear head from the adapter's
``heads.safetensors``; decoders score the prompt ``{text}\\n{text_pair}\\nAnswer:`` and read the
next-token logits of each label word's first token (``model.label_token_ids``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file

ANSWER_SUFFIX = "\nAnswer:"


class EnsembleExport:
    def __init__(self, export_dir: str | Path, base_model: str | Path | None = None, device: str = "cpu",
                 batch_size: int = 32) -> None:
        from peft import PeftModel
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        self.dir = Path(export_dir)
        self.spec = json.loads((self.dir / "ensemble.json").read_text())
        m = self.spec["model"]
        self.kind, self.max_length, self.batch_size = m["kind"], m["max_length"], batch_size
        self.device = torch.device(device)
        base = str(base_model or os.environ.get("ELORA_EXPORT_BASE_MODEL") or m["base_model_path"])
        if not Path(base).is_dir():
            raise FileNotFoundError(f"base model directory {base} not found: {m['how_to_get']}")
        remote = bool(m.get("trust_remote_code"))
        self.tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=remote)
        kwargs: dict = {"dtype": resolve_dtype(m["dtype"], self.device), "trust_remote_code": remote,
                        "use_safetensors": True}
        q = m.get("quantization")
        if q:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                **{**q, "bnb_4bit_compute_dtype": resolve_dtype(q["bnb_4bit_compute_dtype"], self.device)})
        if self.device.type != "cpu":
            kwargs["device_map"] = {"": str(self.device)}
        if self.kind == "decoder":
            model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        else:
            if m.get("add_pooling_layer") is not None:
                kwargs["add_pooling_layer"] = m["add_pooling_layer"]
            model = AutoModel.from_pretrained(base, **kwargs)
        if q:
            keep_4bit_layers_unpacked(model)
        if not self.spec["adapter"]["standard_peft"]:
            try:  # registers elora_ray's bottleneck method with PEFT
                import elora_ray.adapters.bottleneck  # noqa: F401
            except ImportError as exc:
                raise ImportError(f"adapter type {self.spec['adapter']['type']!r} is elora_ray's own PEFT method: "
                                  "install elora_ray to load it") from exc
        names = self.spec["adapters"]
        peft_model = PeftModel.from_pretrained(model, str(self.dir / "adapters" / names[0]), adapter_name=names[0])
        for a in names[1:]:
            peft_model.load_adapter(str(self.dir / "adapters" / a), adapter_name=a)
        if not q:  # a 4-bit base was placed by device_map
            peft_model.to(self.device)
        self.model = peft_model.eval()
        self.heads: dict[str, dict[str, torch.Tensor]] = {}
        for a in names:
            path = self.dir / "adapters" / a / "heads.safetensors"
            if path.is_file():
                self.heads[a] = {k: v.to(self.device) for k, v in load_file(str(path)).items()}
        if self.kind == "decoder":
            tok = self.tokenizer
            self.suffix_ids = tok.encode(ANSWER_SUFFIX, add_special_tokens=False)
            self.newline_ids = tok.encode("\n", add_special_tokens=False)
            bos = getattr(tok, "bos_token_id", None)
            self.prefix_ids = [bos] if bos is not None and getattr(tok, "add_bos_token", False) else []
            pad = tok.pad_token_id
            self.pad_id = pad if pad is not None else (tok.eos_token_id or 0)
            self.text_budget = self.max_length - len(self.suffix_ids) - len(self.prefix_ids)

    # ---------------------------------------------------------------- what the export holds
    def tasks(self) -> list[str]:
        return list(self.spec["tasks"])

    def labels(self, task: str) -> list[str]:
        return list(self._task(task)["labels"])

    def coefficients(self, task: str) -> dict[str, float]:
        return dict(self._task(task)["coefficients"])

    def _task(self, task: str) -> dict:
        if task not in self.spec["tasks"]:
            raise KeyError(f"unknown task {task!r}; this ensemble knows {sorted(self.spec['tasks'])}")
        return self.spec["tasks"][task]

    # ---------------------------------------------------------------- logits
    def logits(self, task: str, texts: Sequence[str], text_pairs: Sequence[str | None] | None = None) -> torch.Tensor:
        """[N, C] ensemble logits for ``task``; columns follow :meth:`labels`."""
        coef = self.coefficients(task)
        z = torch.zeros(len(texts), len(self.labels(task)), dtype=torch.float64)
        for a, c in coef.items():
            z += c * self.adapter_logits(task, a, texts, text_pairs).double()
        return z

    def predict(self, task: str, texts: Sequence[str], text_pairs: Sequence[str | None] | None = None) -> list[str]:
        labels = self.labels(task)
        return [labels[int(i)] for i in self.logits(task, texts, text_pairs).argmax(1)]

    @torch.no_grad()
    def adapter_logits(self, task: str, adapter: str, texts: Sequence[str],
                       text_pairs: Sequence[str | None] | None = None) -> torch.Tensor:
        """[N, C] logits of one adapter."""
        self._task(task)
        texts = list(texts)
        pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
        if len(pairs) != len(texts):
            raise ValueError(f"{len(pairs)} text pairs for {len(texts)} texts")
        self.model.set_adapter(adapter)
        out = torch.zeros(len(texts), len(self.labels(task)), dtype=torch.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = list(range(start, min(start + self.batch_size, len(texts))))
            if self.kind == "decoder":
                out[rows] = self._decoder_logits(task, [texts[i] for i in rows], [pairs[i] for i in rows])
            else:
                for with_pair in (False, True):  # like the run: samples with and without a pair apart
                    sub = [i for i in rows if (pairs[i] is not None) == with_pair]
                    if sub:
                        out[sub] = self._encoder_logits(task, adapter, [texts[i] for i in sub],
                                                        [pairs[i] for i in sub] if with_pair else None)
        return out

    def _encoder_logits(self, task: str, adapter: str, texts: list[str], pairs: list[str] | None) -> torch.Tensor:
        m = self.spec["model"]
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        kw = {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}
        if m.get("uses_token_types") and "token_type_ids" in enc:
            kw["token_type_ids"] = enc["token_type_ids"].to(self.device)
        hidden = self.model(**kw).last_hidden_state
        if m["pooling"] == "cls":
            pooled = hidden[:, 0]
        else:
            mask = kw["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        if adapter not in self.heads:
            raise ValueError(f"adapter {adapter!r} has no heads.safetensors in the export")
        w, b = self.heads[adapter][f"{task}.weight"], self.heads[adapter][f"{task}.bias"]
        return torch.nn.functional.linear(pooled.to(w.dtype), w, b).float().cpu()

    def prompt_ids(self, text: str, pair: str | None) -> list[int]:
        """``{text}\\n{text_pair}\\nAnswer:`` as token ids: each field encoded on its own (no special tokens),
        the tokenizer's BOS first when it adds one, the text fields cut (longest first) to ``max_length``."""
        a = self.tokenizer.encode(text, add_special_tokens=False)
        b = self.tokenizer.encode(pair, add_special_tokens=False) if pair else []
        sep = self.newline_ids if b else []
        budget = self.text_budget - (len(self.newline_ids) if b else 0)
        while len(a) + len(b) > budget:
            if len(a) >= len(b):
                a = a[: max(0, min(len(a) - 1, budget - len(b)))] if len(b) < budget else a[:-1]
            else:
                b = b[: max(0, min(len(b) - 1, budget - len(a)))] if len(a) < budget else b[:-1]
        return self.prefix_ids + a + sep + b + self.suffix_ids

    def _decoder_logits(self, task: str, texts: list[str], pairs: list[str | None]) -> torch.Tensor:
        rows = [self.prompt_ids(t, p) for t, p in zip(texts, pairs)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # right padding: the answer is read at the last real position
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        # as the run scores it: the LM's last hidden state at the answer position through its output layer
        # (the same numbers as ``self.model(...).logits[row, last]``, without the vocabulary logits of every position)
        lm = self.model.get_base_model()
        hidden = lm.base_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        last = (mask.sum(1) - 1).to(hidden.device)
        h = hidden[torch.arange(len(rows), device=hidden.device), last]
        head = lm.get_output_embeddings()
        next_token = head(h.to(head.weight.dtype) if hasattr(head, "weight") else h)
        label_ids = torch.tensor(self.spec["model"]["label_token_ids"][task], device=next_token.device)
        return next_token[:, label_ids].float().cpu()


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a CUDA GPU with native bf16 (compute capability >= 8), float32 elsewhere."""
    if setting == "auto":
        native = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(
            device.index if device.index is not None else torch.cuda.current_device())[0] >= 8
        return torch.bfloat16 if native else torch.float32
    return getattr(torch, setting)


def keep_4bit_layers_unpacked(model: torch.nn.Module) -> None:
    """bitsandbytes on CPUs with AVX512-BF16 repacks a 4-bit weight for a faster kernel on its first no-grad
    forward, rounding its scales to bfloat16; the run computed with the unpacked weights, so keep them."""
    for module in model.modules():
        if type(module).__name__ == "Linear4bit" and type(module).__module__.startswith("bitsandbytes"):
            module.support_avx512bf16_for_cpu = False


def load_ensemble(export_dir: str | Path, base_model: str | Path | None = None, device: str = "cpu",
                  batch_size: int = 32) -> EnsembleExport:
    """The export in ``export_dir`` on its base model (``base_model`` or ``$ELORA_EXPORT_BASE_MODEL`` overrides
    the directory ensemble.json names)."""
    return EnsembleExport(export_dir, base_model, device, batch_size)
