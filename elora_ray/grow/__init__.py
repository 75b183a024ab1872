"""Grow a finished run by its task list: ``elora add-task`` / ``elora remove-task`` (see :mod:`.stage`)."""

from .stage import grow_run

__all__ = ["grow_run"]
