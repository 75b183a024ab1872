"""A few hand-written rows of two tiny tasks (binary and 3-way, single sentences and pairs, lengths
that pad differently): the input of the per-sample feature tests, which compare a batched
extractor with a per-sample autograd loop on them."""

from __future__ import annotations

import torch

from elora_ray.models.classifier import TaskSpec

TASKS = [TaskSpec("sent", ("negative", "positive")), TaskSpec("topic", ("science", "sports", "art"))]
ROWS = [
    ("sent", "a fine film with a great cast", None, 1),
    ("topic", "the match ended late", "sports page", 1),
    ("sent", "awful plot", None, 0),
    ("topic", "a new molecule was found in the laboratory by a physicist", None, 0),
    ("topic", "paint", "gallery", 2),
]


def batch(base, rows) -> tuple[dict, torch.Tensor]:
    """(tokenized inputs, gold label ids) of ``rows`` for the classifier ``base``."""
    enc = base.tokenize([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    return enc, torch.tensor([r[3] for r in rows])
