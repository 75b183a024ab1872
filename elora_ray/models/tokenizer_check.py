"""The part of the model check that needs only the tokenizer, for ``elora validate``.

``elora run`` builds the model before training (:mod:`elora_ray.model_check`); of what that finds,
these need no weights: the model name, the verbalizer words' first tokens (decoders) and how many
samples get truncated to ``model.max_length``. ``elora validate`` runs them, so a config that
validates does not stop at the model check. SmolLM2's tokenizer is read from its GGUF when it has
not been converted yet (the conversion happens on the first real use).
"""

from __future__ import annotations

import logging
from typing import Sequence

from ..config import ModelConfig
from ..tasks.schema import SPLITS, TaskData
from .classifier import TaskSpec

log = logging.getLogger(__name__)
CHUNK = 2048


def load_tokenizer(cfg: ModelConfig):
    """The model's tokenizer, without loading (or converting) its weights."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .registry import cache_root, resolve_model_dir

    hf_logging.set_verbosity_error()
    if cfg.name_or_path == "smollm2":
        from .smollm2 import smollm2_tokenizer

        return smollm2_tokenizer(cache_root(cfg))
    if cfg.name_or_path in ("tiny-bert", "tiny-llama"):
        from .minilm import minilm_dir
        from .tiny import tiny_model_dir

        tiny = cache_root(cfg) / "models" / cfg.name_or_path
        # the tiny models save all-MiniLM-L6-v2's tokenizer; read it there until one has been built
        path = tiny_model_dir(cfg.name_or_path, cache_root(cfg)) if (tiny / "config.json").is_file() else minilm_dir()
    else:
        path = resolve_model_dir(cfg)
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=cfg.trust_remote_code)


def truncation_counts(tokenizer, cfg: ModelConfig, kind: str, tasks: Sequence[TaskData]) -> dict[str, dict[str, int]]:
    """Per task, how many samples (all splits) exceed ``cfg.max_length``: ``{"count": n, "of": total}``,
    the numbers the model check writes to ``model.json``."""
    if kind == "decoder":
        from .decoder import DecoderPrompt

        too_long = DecoderPrompt(tokenizer, cfg.max_length).too_long
    else:
        from .encoder import encoder_too_long

        def too_long(texts, pairs):
            return encoder_too_long(tokenizer, texts, pairs, cfg.max_length)

    out = {}
    for t in tasks:
        rows = [ex for s in SPLITS for ex in t.splits.get(s, [])]
        count = 0
        for i in range(0, len(rows), CHUNK):
            chunk = rows[i : i + CHUNK]
            count += sum(too_long([e.text for e in chunk], [e.text_pair for e in chunk]))
        out[t.name] = {"count": count, "of": len(rows)}
    return out


def check_with_tokenizer(cfg: ModelConfig, kind: str, tasks: Sequence[TaskData]) -> dict[str, dict[str, int]]:
    """Run the tokenizer-only checks of the model check: raises :class:`~elora_ray.errors.ModelError`
    when a decoder task's verbalizer words share a first token; logs a warning per task with truncated
    samples and returns the truncation counts."""
    tokenizer = load_tokenizer(cfg)
    if kind == "decoder":
        from .decoder import verbalizer_first_tokens

        verbalizer_first_tokens(tokenizer, [TaskSpec.of(t) for t in tasks])
    counts = truncation_counts(tokenizer, cfg, kind, tasks)
    for name, c in counts.items():
        if c["count"]:
            log.warning(
                "task %s: %d of %d samples exceed model.max_length=%d; their text is truncated%s",
                name, c["count"], c["of"], cfg.max_length,
                " (the Answer: suffix and label position are kept)" if kind == "decoder" else "",
            )
    return counts
