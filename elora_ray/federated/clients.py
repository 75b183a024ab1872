"""Federated clients from a play: roles → clients, token windows for next-token prediction.

The rule (documented in the README and :class:`~elora_ray.config.FederatedConfig`):

1. A *speech* starts at a line ``NAME:`` that follows a blank line (or opens the file) and
   runs until the next speech; its role is ``NAME``.
2. Each role's speeches, in file order, are cut into consecutive clients of at most
   ``client_chars`` characters of speech text (a speech is never cut; a single longer speech
   is a client on its own). Clients with fewer than ``min_client_chars`` characters are dropped.
   Client ids are ``{role}#{k}`` (``k`` counts the role's chunks from 0).
3. A client's text (its speeches joined by newlines) is tokenised; the first
   ``1 − test_fraction`` of the tokens is its train region, the rest its test region, and the
   last ``validation_fraction`` of the train region is its validation region — contiguous
   regions, so no window straddles two splits.
4. A sample is a window of ``context_tokens`` tokens plus the token that follows it (the
   target); windows start every ``stride`` tokens. At most ``max_windows[split]`` windows per
   client and split are kept, evenly spaced. Sample ids are ``{client}/{split}/{start}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..config import FederatedConfig
from ..errors import DataError

SPEAKER = re.compile(r"^([A-Za-z][A-Za-z0-9 ,.'&-]{0,60}):\s*$")
WINDOW_SCHEMA = pa.schema(
    [
        ("client", pa.string()),
        ("split", pa.string()),
        ("sample_id", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("target", pa.int32()),
    ]
)


@dataclass(frozen=True)
class Client:
    name: str
    role: str
    text: str
    origin: str = "play"
    """Where the client's text comes from: ``play``, or the name of a ``federated.sources`` entry."""


def parse_speeches(text: str, source: str = "<text>") -> list[tuple[str, str]]:
    """(role, speech text) in file order."""
    speeches: list[tuple[str, list[str]]] = []
    prev_blank = True
    for lineno, line in enumerate(text.splitlines(), 1):
        m = SPEAKER.match(line) if prev_blank else None
        if m:
            speeches.append((m.group(1).strip(), []))
        elif line.strip():
            if not speeches:
                raise DataError(f"{source}:{lineno}: text before the first 'NAME:' speaker line")
            speeches[-1][1].append(line.rstrip())
        prev_blank = not line.strip()
    out = [(role, "\n".join(lines)) for role, lines in speeches if lines]
    if not out:
        raise DataError(f"{source}: no speeches found (expected blocks that start with a 'NAME:' line)")
    return out


def make_clients(speeches: list[tuple[str, str]], client_chars: int, min_client_chars: int) -> list[Client]:
    """Cut each role's speeches into consecutive clients of ≤ ``client_chars`` characters."""
    by_role: dict[str, list[str]] = {}
    for role, speech in speeches:
        by_role.setdefault(role, []).append(speech)
    clients: list[Client] = []
    for role, parts in by_role.items():
        chunks: list[list[str]] = [[]]
        size = 0
        for sp in parts:
            if chunks[-1] and size + len(sp) > client_chars:
                chunks.append([])
                size = 0
            chunks[-1].append(sp)
            size += len(sp)
        for k, chunk in enumerate(chunks):
            body = "\n".join(chunk)
            if len(body) >= min_client_chars:
                clients.append(Client(f"{role}#{k}", role, body))
    return clients


def _evenly(starts: list[int], cap: int) -> list[int]:
    if len(starts) <= cap:
        return starts
    idx = np.unique(np.linspace(0, len(starts) - 1, cap).round().astype(int))
    return [starts[i] for i in idx]


def client_windows(tokens: list[int], cfg: FederatedConfig) -> dict[str, list[int]]:
    """Window start offsets per split for one client's token stream (see the module rule)."""
    n = len(tokens)
    span = cfg.context_tokens + 1
    test_start = int(round(n * (1 - cfg.test_fraction)))
    val_start = int(round(test_start * (1 - cfg.validation_fraction)))
    regions = {"train": (0, val_start), "validation": (val_start, test_start), "test": (test_start, n)}
    out = {}
    for split, (a, b) in regions.items():
        starts = list(range(a, b - span + 1, cfg.stride))
        out[split] = _evenly(starts, cfg.max_windows[split])
    return out


def load_clients(cfg: FederatedConfig, source: Path) -> list[Client]:
    if not source.is_file():
        raise DataError(f"federated.source {source}: file not found")
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    clients = make_clients(parse_speeches(text, str(source)), cfg.client_chars, cfg.min_client_chars)
    return clients


def windows_table(clients: list[Client], tokenizer, cfg: FederatedConfig) -> tuple[pa.Table, dict]:
    """All clients' windows (schema :data:`WINDOW_SCHEMA`) and per-client counts."""
    cols: dict[str, list] = {k: [] for k in WINDOW_SCHEMA.names}
    counts: dict[str, dict[str, int]] = {}
    L = cfg.context_tokens
    for c in clients:
        tokens = tokenizer.encode(c.text, add_special_tokens=False)
        wins = client_windows(tokens, cfg)
        counts[c.name] = {s: len(v) for s, v in wins.items()}
        for split, starts in wins.items():
            for s in starts:
                cols["client"].append(c.name)
                cols["split"].append(split)
                cols["sample_id"].append(f"{c.name}/{split}/{s}")
                cols["input_ids"].append(tokens[s : s + L])
                cols["target"].append(tokens[s + L])
    return pa.table(cols, schema=WINDOW_SCHEMA), counts


def usable_clients(clients: list[Client], tokenizer, cfg: FederatedConfig) -> tuple[list[Client], list[str]]:
    """Clients with at least one train and one test window (rule step 5), and the names dropped."""
    keep: list[Client] = []
    dropped: list[str] = []
    for c in clients:
        wins = client_windows(tokenizer.encode(c.text, add_special_tokens=False), cfg)
        if wins["train"] and wins["test"]:
            keep.append(c)
        else:
            dropped.append(c.name)
    return keep, dropped


def text_clients(name: str, texts: list[str], client_chars: int, min_client_chars: int) -> list[Client]:
    """A non-play source: its texts, in order, cut into clients ``<name>#<k>`` like one role's speeches."""
    return [Client(c.name, c.role, c.text, origin=name)
            for c in make_clients([(name, t) for t in texts if t.strip()], client_chars, min_client_chars)]


def round_robin(clients: list[Client], cap: int) -> list[Client]:
    """The first ``cap`` clients taking one from each origin (role of a source) in turn, so a cap keeps
    every source represented. With one origin this is simply the first ``cap``."""
    by_origin: dict[str, list[Client]] = {}
    for c in clients:
        by_origin.setdefault(c.origin, []).append(c)
    if len(by_origin) == 1:
        return clients[:cap]
    out: list[Client] = []
    queues = [list(v) for v in by_origin.values()]
    while len(out) < cap and any(queues):
        for q in queues:
            if q and len(out) < cap:
                out.append(q.pop(0))
    return out


def select_clients(clients: list[Client], tokenizer, cfg: FederatedConfig, source: str) -> tuple[list[Client], list[str]]:
    """Rule step 5: usable clients, capped at ``max_clients`` (in turn from each origin), at least ``min_clients``."""
    keep, dropped = usable_clients(clients, tokenizer, cfg)
    if cfg.max_clients is not None:
        keep = round_robin(keep, cfg.max_clients)
    need = min(cfg.min_clients, cfg.max_clients or cfg.min_clients)
    if len(keep) < need:
        raise DataError(
            f"{source}: the client rule (client_chars={cfg.client_chars}, min_client_chars={cfg.min_client_chars}, "
            f"context_tokens={cfg.context_tokens}) gives {len(keep)} usable clients, fewer than "
            f"federated.min_clients={cfg.min_clients}; lower federated.client_chars to split roles further"
        )
    return keep, dropped
