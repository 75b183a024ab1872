"""Run-directory logging: console + ``run.log``, secrets redacted, third-party chatter quiet."""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL|AUTH", re.IGNORECASE)
"""Environment variables whose values never appear in our logs (HF_TOKEN, RAY_AUTH_TOKEN, AWS_SECRET_ACCESS_KEY, ...)."""
SECRET_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),  # Hugging Face tokens
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),  # user:password@ in URLs (MLflow, S3 endpoints)
    re.compile(r"(?i)(?<=bearer )[A-Za-z0-9._~+/=-]{8,}"),  # Authorization: Bearer ...
)
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with secret-looking values (see :data:`SECRET_ENV`, :data:`SECRET_PATTERNS`) replaced by ``***``."""
    for name, value in os.environ.items():
        if len(value) >= 8 and SECRET_ENV.search(name) and value in text:
            text = text.replace(value, REDACTED)
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites each record's message with :func:`redact` before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if redact(str(exc)) != str(exc):
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


HARMLESS_LIBRARY_MESSAGES = (
    # bitsandbytes, imported by peft in every process that builds a model, asks the `kernels` package
    # for a fused CPU kernel on AVX512-BF16 CPUs; offline (HF_HUB_OFFLINE=1) `kernels` cannot check the
    # kernel's publisher and says so, then the kernel is not found and bitsandbytes keeps its own
    # dequantise-and-matmul path (the one elora uses anyway, see models.build.disable_cpu_weight_packing)
    ("kernels._internals.hf_hub", "Skipping publisher trust check"),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)
"""(logger, message start) of third-party log lines that say nothing actionable: dropped unless
``--verbose``, in the driver (:func:`setup_logging`) and in Ray workers (:func:`quiet_worker_logs`)."""


class QuietLibraries(logging.Filter):
    """Drops the :data:`HARMLESS_LIBRARY_MESSAGES` records unless ``--verbose``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _VERBOSE:
            return True
        return not any(record.name == name and str(record.msg).startswith(start)
                       for name, start in HARMLESS_LIBRARY_MESSAGES)


def quiet_library_logs() -> None:
    """Attach :class:`QuietLibraries` to the loggers that write :data:`HARMLESS_LIBRARY_MESSAGES`
    (a logger's own filter applies whatever handler ends up writing the record; idempotent)."""
    for name, _ in HARMLESS_LIBRARY_MESSAGES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietLibraries) for f in logger.filters):
            logger.addFilter(QuietLibraries())


def quiet_worker_logs() -> None:
    """Ray's ``worker_process_setup_hook`` for every worker of a run that is not ``--verbose``
    (:func:`elora_ray.raysession.ensure_ray` installs it): the harmless library notices stay off the
    console there too (a worker has no logging set up, so Python prints any warning to stderr, and Ray
    forwards that to the driver's console)."""
    quiet_library_logs()


_VERBOSE = False


def set_verbose(verbose: bool) -> None:
    """Make DEBUG the default level of every later :func:`setup_logging` (the CLI's ``--verbose``)."""
    global _VERBOSE
    _VERBOSE = bool(verbose)
    if logging.getLogger().handlers:
        logging.getLogger().setLevel(logging.DEBUG if _VERBOSE else logging.INFO)


def is_verbose() -> bool:
    return _VERBOSE


def setup_logging(run_dir: Path | None = None, verbose: bool | None = None) -> None:
    """Console + ``run_dir/run.log`` handlers (replacing ours from an earlier call). ``verbose``:
    DEBUG level; None keeps what :func:`set_verbose` chose."""
    verbose = _VERBOSE if verbose is None else verbose
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_elora", False):
            root.removeHandler(h)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    console._elora = True  # type: ignore[attr-defined]
    console.addFilter(RedactSecrets())
    root.addHandler(console)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
        fh.setFormatter(logging.Formatter(FORMAT))
        fh._elora = True  # type: ignore[attr-defined]
        fh.addFilter(RedactSecrets())
        root.addHandler(fh)
    quiet_library_logs()
    for noisy in ("bitsandbytes", "transformers", "peft", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def log_error_to_file(message: str) -> None:
    """Record a user-facing error in ``run.log`` only (the CLI already prints it to stderr)."""
    record = logging.LogRecord("elora", logging.ERROR, __file__, 0, message, None, None)
    for h in logging.getLogger().handlers:
        if getattr(h, "_elora", False) and isinstance(h, logging.FileHandler):
            h.handle(record)
