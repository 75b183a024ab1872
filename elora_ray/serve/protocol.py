"""The JSON of ``POST /predict``: parsing and checking a request body, naming the field at fault.

Request::

    {"task": "rte", "text": "He left early.", "text_pair": "He went away."}      one input
    {"task": "sst2", "texts": ["A warm film.", "Dull."]}                          several inputs
    {"task": "rte", "texts": ["a", "b"], "text_pairs": ["c", null]}               pairs (null: no pair)

Response (200)::

    {"task": "sst2", "fingerprint": "…", "predictions": [{"label": "positive",
     "probabilities": {"negative": 0.12, "positive": 0.88}}, …]}

one prediction per input, in order. Errors are ``{"error": "<field>: <what is wrong>", "field": "<field>"}``
with 400 (not JSON, not an object, unknown or missing field, wrong type, empty text, unknown task)
or 413 (body, a text or the number of inputs over the limits).
"""

from __future__ import annotations

import json
from dataclasses import dataclass


class RequestError(Exception):
    """A bad request: HTTP status, the field at fault (None for the body) and a message naming it."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.status = status
        self.field = field

    def to_json(self) -> dict:
        return {"error": str(self), "field": self.field}


@dataclass(frozen=True)
class Limits:
    max_items: int = 256
    max_text_chars: int = 20_000
    max_body_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True)
class PredictRequest:
    task: str
    texts: list[str]
    text_pairs: list[str | None] | None  # None: no input has a pair


FIELDS = ("task", "text", "texts", "text_pair", "text_pairs")


def _text(value, field: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise RequestError(400, field, f"must be a string, got {_kind(value)}")
    if not value.strip():
        raise RequestError(400, field, "is empty")
    if len(value) > limits.max_text_chars:
        raise RequestError(413, field, f"has {len(value)} characters, more than the limit of {limits.max_text_chars}")
    return value


def _kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def parse_predict(body: bytes, tasks: dict[str, list[str]], limits: Limits) -> PredictRequest:
    """Check a ``POST /predict`` body against the run's tasks and the limits."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, None, f"request body has {len(body)} bytes, more than the limit of {limits.max_body_bytes}")
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError(400, None, "request body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, None, f"request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise RequestError(400, None, f"request body must be a JSON object with 'task' and 'text' or 'texts', got {_kind(data)}")
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        raise RequestError(400, unknown[0], f"unknown field; a request has {', '.join(FIELDS)}")
    if "task" not in data:
        raise RequestError(400, "task", "is missing")
    task = data["task"]
    if not isinstance(task, str):
        raise RequestError(400, "task", f"must be a string, got {_kind(task)}")
    if task not in tasks:
        raise RequestError(400, "task", f"unknown task {task!r}; this ensemble knows {sorted(tasks)}")
    if ("text" in data) == ("texts" in data):
        raise RequestError(400, "text", "give either 'text' (one input) or 'texts' (a list), not both" if "text" in data
                           else "is missing (give 'text', one input, or 'texts', a list)")
    if "text" in data:
        if "text_pairs" in data:
            raise RequestError(400, "text_pairs", "goes with 'texts'; with 'text' give 'text_pair'")
        text = _text(data["text"], "text", limits)
        pair = data.get("text_pair")
        return PredictRequest(task, [text], None if pair is None else [_text(pair, "text_pair", limits)])
    if "text_pair" in data:
        raise RequestError(400, "text_pair", "goes with 'text'; with 'texts' give 'text_pairs'")
    texts = data["texts"]
    if not isinstance(texts, list):
        raise RequestError(400, "texts", f"must be an array of strings, got {_kind(texts)}")
    if not texts:
        raise RequestError(400, "texts", "is empty")
    if len(texts) > limits.max_items:
        raise RequestError(413, "texts", f"has {len(texts)} items, more than the limit of {limits.max_items}")
    texts = [_text(t, f"texts[{i}]", limits) for i, t in enumerate(texts)]
    pairs = data.get("text_pairs")
    if pairs is None:
        return PredictRequest(task, texts, None)
    if not isinstance(pairs, list):
        raise RequestError(400, "text_pairs", f"must be an array of strings (or nulls), got {_kind(pairs)}")
    if len(pairs) != len(texts):
        raise RequestError(400, "text_pairs", f"has {len(pairs)} items for {len(texts)} texts; give one per text (null: none)")
    pairs = [None if p is None else _text(p, f"text_pairs[{i}]", limits) for i, p in enumerate(pairs)]
    return PredictRequest(task, texts, pairs if any(p is not None for p in pairs) else None)
