"""Tiny randomly initialised models for tests and smoke runs (no files needed but a tokenizer).

They reuse the WordPiece tokenizer shipped with all-MiniLM-L6-v2 (architecture does not
constrain the tokenizer), are seeded, and are saved once as safetensors in the cache so that
every loading path (including 4-bit quantisation via ``from_pretrained``) is the real one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from ..errors import ModelError
from ..io import publish_once

TINY_HIDDEN = 64


def _build(name: str, vocab_size: int):
    torch.manual_seed(0)
    if name == "tiny-bert":
        cfg = BertConfig(
            vocab_size=vocab_size, hidden_size=TINY_HIDDEN, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=512,
        )
        return BertModel(cfg)
    if name == "tiny-llama":
        cfg = LlamaConfig(
            vocab_size=vocab_size, hidden_size=TINY_HIDDEN, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        )
        return LlamaForCausalLM(cfg)
    raise ModelError(f"unknown tiny model '{name}' (tiny-bert, tiny-llama)")


def tiny_model_dir(name: str, cache: Path) -> Path:
    target = cache / "models" / name
    if (target / "config.json").is_file():
        return target
    from .minilm import minilm_dir

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    model = _build(name, tok.vocab_size)
    with publish_once(target) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
    return target
