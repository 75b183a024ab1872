"""``elora export``: a finished run's ensemble as standard PEFT adapters, heads, weights and a loader."""

from .run import ExportError, ExportResult, export_run

__all__ = ["ExportError", "ExportResult", "export_run"]
