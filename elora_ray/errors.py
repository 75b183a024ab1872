"""Error types that name the file, line and field a user must fix."""

from __future__ import annotations

from pathlib import Path


class EloraError(Exception):
    """Base class for user-facing errors (printed without a traceback by the CLI)."""


class ConfigError(EloraError):
    """The configuration file or an override is invalid."""


class DataError(EloraError):
    """A data file is unreadable or its content is invalid.

    The message always names the file, and the line and field when they are known.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        task: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.task = task
        where = []
        if task is not None:
            where.append(f"task '{task}'")
        if self.path is not None:
            loc = self.path
            if line is not None:
                loc += f":{line}"
            where.append(loc)
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.reason = message


class ModelError(EloraError):
    """A model could not be resolved or loaded (never falls back to a hub)."""


class DeviceError(EloraError):
    """A model or worker is not where it must run (a reserved GPU it cannot see, modules split across devices)."""
