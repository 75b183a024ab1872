"""Out-of-memory errors: recognising them (to back off to smaller batches) and freeing what is cached."""

from __future__ import annotations

import gc

import torch


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator failing to allocate."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def free_cached_memory(device: str | torch.device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
