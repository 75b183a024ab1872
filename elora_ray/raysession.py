"""Connect to Ray once per process: an existing cluster (``ray.address`` / ``$RAY_ADDRESS``,
e.g. under ``ray job submit``) or a local instance on this machine."""

from __future__ import annotations

import logging
import os

from .config import RayConfig

log = logging.getLogger(__name__)

HARMLESS_RAY_MESSAGES = (
    "Progress bars disabled",  # we turn Ray Data's bars off on purpose: ours count samples per stage
    "Token authentication is enabled for this Ray cluster",  # the default since Ray 2.5x; nothing to do
)
"""Ray log lines every run printed that say nothing actionable; dropped from the console unless
``--verbose``. (Ray's C++ notice about actor constructor arguments in the object store, issue
ray-project/ray#53727, is written by the core worker directly and cannot be filtered from Python.)"""


class QuietRay(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from .runlog import is_verbose

        return is_verbose() or not any(m in record.getMessage() for m in HARMLESS_RAY_MESSAGES)


def quiet_ray_logs() -> None:
    """Attach :class:`QuietRay` to the handlers of Ray's loggers (idempotent)."""
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, QuietRay) for f in handler.filters):
                handler.addFilter(QuietRay())


def ensure_ray(cfg: RayConfig | None = None) -> None:
    import ray

    quiet_ray_logs()
    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # Workers must import elora_ray the same way the driver does (editable install or cwd).
    kwargs: dict = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        log.info("connected to Ray at %s", address)
    else:
        if cfg.num_cpus is not None:
            kwargs["num_cpus"] = cfg.num_cpus
        ray.init(**kwargs)
        log.info("started a local Ray instance (%s CPUs)", ray.cluster_resources().get("CPU"))
    from ray.data import DataContext

    quiet_ray_logs()  # Ray Data adds its own handlers on import
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # ours are per stage, in samples
    ctx.print_on_execution_start = False


def current_node_id() -> str | None:
    """The Ray node this runs on (where an adapter was trained or a shard featurized), or None outside Ray."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - observability only
        return None


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))
