"""The README.md written into an export: what it holds and how to load and combine it without elora_ray."""

from __future__ import annotations

import json


def export_readme(spec: dict) -> str:
    m, ad = spec["model"], spec["adapter"]
    kind, first = m["kind"], spec["adapters"][0]
    task = next(iter(spec["tasks"]))
    parts = [
        "# Ensemble export (elora_ray)\n",
        f"The ensemble of the run `{spec['run']}`: a {kind} model (`{m['name_or_path']}`, {m['model_type']}) with "
        f"{len(spec['adapters'])} `{ad['type']}` adapter(s) combined per task for {len(spec['tasks'])} task(s).\n",
        "## What is here\n",
        "| path | content |\n|---|---|",
        "| `adapters/<id>/adapter_config.json`, `adapter_model.safetensors` | one PEFT adapter per ensemble member, "
        f"on the plain `{'AutoModelForCausalLM' if kind == 'decoder' else 'AutoModel'}` base (module names of the base "
        "model; `base_model_name_or_path` is the base directory below) |",
        *(["| `adapters/<id>/heads.safetensors` | that adapter's linear head per task: `<task>.weight` [C, hidden], "
           "`<task>.bias` [C] |"] if kind == "encoder" else []),
        "| `ensemble.json` | base model, tasks and labels, groups, boosting learners and coefficients, the θ* reference, "
        "combination weights, each task's expanded adapter coefficients"
        + (", prompt and label token ids" if kind == "decoder" else ", pooling") + " |",
        "| `load_ensemble.py` | a loader needing only torch, transformers, peft, safetensors: per-task ensemble logits |",
        "",
        "## Base model (not copied)\n",
        f"`{m['base_model_path']}` — {m['how_to_get']}. Load it in `{m['dtype']}`"
        + (f" ({m['dtype_auto']})" if m["dtype"] == "auto" else "")
        + (" as 4-bit: `BitsAndBytesConfig(**ensemble.json model.quantization)` (with `bnb_4bit_compute_dtype` as a torch "
           "dtype; `auto` as for `dtype`) and, on a CPU, each bitsandbytes `Linear4bit` set to "
           "`support_avx512bf16_for_cpu = False` (the run computed with unpacked 4-bit weights)"
           if m["quantization"] else "")
        + ". Elsewhere, pass `base_model=` to the loader or set `$ELORA_EXPORT_BASE_MODEL`.\n",
        "## Adapter type\n",
        ("Every adapter is a **standard PEFT adapter** (`peft_type` " + ", ".join(ad["peft_types"]) + ")."
         if ad["standard_peft"] else
         "**Not a standard PEFT type**: `peft_type` " + ", ".join(ad["peft_types"]) + " is elora_ray's own PEFT method; "
         "loading needs elora_ray installed (`import elora_ray.adapters.bottleneck` first)."),
        *[f"- {n}" for n in ad["notes"]],
        "",
        "## Load with the loader\n",
        "```python\nimport sys; sys.path.insert(0, \"<this directory>\")   # or copy load_ensemble.py next to your code\n"
        "from load_ensemble import load_ensemble\n\nens = load_ensemble(\"<this directory>\")"
        + f"\nens.logits({task!r}, [\"some text\"])          # [N, C] ensemble logits, columns = ens.labels({task!r})"
        + f"\nens.predict({task!r}, [\"some text\"], text_pairs=[\"second text\"])\n```\n",
        "## Load one adapter with plain PEFT\n",
        _decoder_section(spec) if kind == "decoder" else _encoder_section(spec),
        "## Combine the adapters\n",
        "One adapter's logits are z_a(s) (above). The ensemble's logits for task i are\n",
        "    z_i(s) = Σ_j α_ij · [ z_base_j(s) + Σ_t c_jt · (z_jt(s) − z_θ*(s)) ]\n",
        "with α_ij = `tasks[i].weights[j]` (one per group), z_base_j = group j's `base` adapter, z_jt = its boosting "
        "learners (`groups[j].learners[t].adapter`) with coefficients c_jt = `.coef`, and z_θ* = the `reference` adapter "
        "(the untrained adapter at its initialisation θ*; only present with boosting). Expanded, "
        "z_i = Σ_a `tasks[i].coefficients[a]` · z_a; probabilities are softmax(z_i).\n",
        "| group | tasks | base | boosting learners (coef) |\n|---|---|---|---|",
        *[f"| {j} | {', '.join(g['tasks'])} | {g['base']} | "
          + (", ".join(f"{lr['adapter']} ({lr['coef']:.4g})" for lr in g["learners"]) or "—") + " |"
          for j, g in enumerate(spec["groups"])],
        "",
        "| task | labels | α per group | coefficients |\n|---|---|---|---|",
        *[f"| {n} | {', '.join(t['labels'])} | {', '.join(f'{a:.4g}' for a in t['weights'])} | "
          + ", ".join(f"{a}: {c:.4g}" for a, c in t["coefficients"].items()) + " |"
          for n, t in spec["tasks"].items()],
        "",
        "```python\nimport json, torch\n\nspec = json.load(open(\"ensemble.json\"))\n"
        "def ensemble_logits(task, z):   # z: {adapter id: [N, C] logits of that adapter}\n"
        "    return sum(c * z[a] for a, c in spec[\"tasks\"][task][\"coefficients\"].items())\n```\n",
        f"Exported with: elora_ray {spec['versions'].get('elora_ray')}, torch {spec['versions'].get('torch')}, "
        f"transformers {spec['versions'].get('transformers')}, peft {spec['versions'].get('peft')}.\n",
    ]
    return "\n".join(parts)


def _dtype(m: dict) -> str:
    return "torch.float32" if m["dtype"] == "auto" else f"torch.{m['dtype']}"  # auto: float32 on a CPU


def _decoder_section(spec: dict) -> str:
    m = spec["model"]
    first, task = spec["adapters"][0], next(iter(spec["tasks"]))
    words = "\n".join(f"| {n} | {', '.join(m['label_words'][n])} | {json.dumps(m['label_token_ids'][n])} |"
                      for n in spec["tasks"])
    return f"""```python
import json, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

spec = json.load(open("ensemble.json"))
base = spec["model"]["base_model_path"]
tok = AutoTokenizer.from_pretrained(base)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype={_dtype(m)}),
                                  "adapters/{first}").eval()

def prompt_ids(text, pair=None):   # {{text}}\\n{{text_pair}}\\nAnswer:, each piece encoded on its own
    enc = lambda s: tok.encode(s, add_special_tokens=False)
    bos = [tok.bos_token_id] if getattr(tok, "add_bos_token", False) and tok.bos_token_id is not None else []
    return bos + enc(text) + (enc("\\n") + enc(pair) if pair else []) + enc("\\nAnswer:")

ids = torch.tensor([prompt_ids("some text")])
with torch.no_grad():
    next_token = model(input_ids=ids).logits[0, -1]
z = next_token[spec["model"]["label_token_ids"][{task!r}]]   # one logit per label, in tasks[{task!r}].labels order
```

**Prompt.** `{{text}}\\n{{text_pair}}\\nAnswer:` (the `\\n{{text_pair}}` part only for sentence pairs): the text, a
newline and the pair, and `\\nAnswer:` are tokenized **separately, without special tokens**, and concatenated (after
the tokenizer's BOS when it adds one). Inputs over `max_length` = {m['max_length']} tokens are cut inside the text
fields (longest first), never in `\\nAnswer:`; `load_ensemble.py` (`prompt_ids`) does exactly that. A batch is padded
on the right and read at each row's last real token.

**Labels.** Each label's logit is the next-token logit of the first token of `" " + word` (a leading space):

| task | label words | first token ids |
|---|---|---|
{words}
"""


def _encoder_section(spec: dict) -> str:
    m = spec["model"]
    first, task = spec["adapters"][0], next(iter(spec["tasks"]))
    pool = ("hidden[:, 0]" if m["pooling"] == "cls" else
            "(hidden * mask).sum(1) / mask.sum(1).clamp_min(1)   # mean over real tokens")
    extra = ", add_pooling_layer=False" if m.get("add_pooling_layer") is False else ""
    return f"""```python
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

base = "{m['base_model_path']}"
tok = AutoTokenizer.from_pretrained(base)
model = PeftModel.from_pretrained(AutoModel.from_pretrained(base, dtype={_dtype(m)}{extra}), "adapters/{first}").eval()
heads = load_file("adapters/{first}/heads.safetensors")

enc = tok(["some text"], truncation=True, max_length={m['max_length']}, padding=True, return_tensors="pt")
with torch.no_grad():
    hidden = model(**enc).last_hidden_state
mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
pooled = {pool}
z = torch.nn.functional.linear(pooled, heads["{task}.weight"], heads["{task}.bias"])   # [N, C]
```

Pooling: `{m['pooling']}`; token type ids {'are' if m.get('uses_token_types') else 'are not'} passed to the model
(sentence pairs: `tok(texts, pairs, ...)`).
"""
