"""Per-client results appended as they arrive, so a killed federated run keeps what it finished."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..io import write_text


class ClientProgress:
    """Per-client results appended to a JSON-lines file as they arrive, so a killed run keeps them.

    Each line is ``{"client": ..., "elapsed_s": ..., **result}``; a torn last line (the process
    died while writing it) is ignored. ``seconds_before`` is the wall time already spent.
    """

    def __init__(self, path: Path, reset: bool = False) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if reset:
            path.unlink(missing_ok=True)
        self.done: dict[str, dict] = {}
        self.seconds_before = 0.0
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):  # drop the torn line so the next append starts clean
                text = text[: text.rfind("\n") + 1]
                write_text(path, text)
            for line in text.splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.seconds_before = max(self.seconds_before, float(row.pop("elapsed_s", 0.0)))
                self.done[row.pop("client")] = row
        self._t0 = time.perf_counter()

    def add(self, client: str, result: dict) -> None:
        row = {"client": client, "elapsed_s": self.seconds_before + time.perf_counter() - self._t0, **result}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
