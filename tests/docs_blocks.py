"""Read the command blocks of the README and docs/ so tests can run or check them as written."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(md: Path, lang: str = "bash") -> list[str]:
    """The fenced blocks of ``md`` in ``lang``, in order."""
    return [body for kind, body in FENCE.findall(md.read_text(encoding="utf-8")) if kind == lang]


def block_after(md: Path, heading: str, lang: str = "bash", index: int = 0) -> str:
    """The ``index``-th ``lang`` block after the line that contains ``heading``."""
    text = md.read_text(encoding="utf-8")
    at = text.find(heading)
    assert at >= 0, f"{md.name}: no {heading!r}"
    found = [body for kind, body in FENCE.findall(text[at:]) if kind == lang]
    assert len(found) > index, f"{md.name}: fewer than {index + 1} {lang} blocks after {heading!r}"
    return found[index]


def site(block: str, values: dict[str, str]) -> str:
    """``block`` with each site-specific value replaced; every one must appear (so the docs cannot drift)."""
    for old, new in values.items():
        assert old in block, f"the documented block no longer contains {old!r}:\n{block}"
        block = block.replace(old, new)
    return block


def commands(block: str) -> list[str]:
    """The shell commands of a block: continuation lines joined, comments and blank lines dropped."""
    out, cur = [], ""
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line) if not line.lstrip().startswith("#") else ""
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if cur.strip():
            out.append(cur.strip())
        cur = ""
    return out
