"""Connect to Ray once per process: an existing cluster (``ray.address`` / ``$RAY_ADDRESS``,
e.g. under ``ray job submit``) or a local instance on this machine."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .config import RayConfig
from .errors import ConfigError

log = logging.getLogger(__name__)

HARMLESS_RAY_MESSAGES = (
    "Progress bars disabled",  # we turn Ray Data's bars off on purpose: ours count samples per stage
    "Token authentication is enabled for this Ray cluster",  # the default since Ray 2.5x; nothing to do
)
"""Ray log lines every run printed that say nothing actionable; dropped from the console unless
``--verbose``. (Ray's C++ notice "Actor ... has constructor arguments in the object store and max_restarts > 0",
ray-project/ray#53727, is written by the core worker directly and cannot be filtered from Python. Ray Data 2.60 passes
every actor pool's map function and context as object refs, so any ``map_batches`` with an actor class prints it
once per actor (ray-project/ray#57733); the only way to avoid it, ``max_restarts=0``, would give up Ray Data's
actor restarts, so featurize keeps them and the line stays.)"""


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


WORKER_SETUP_HOOK = "elora_ray.runlog.quiet_worker_logs"


def worker_runtime_env() -> dict:
    """The runtime environment this driver gives its Ray workers: a setup hook that keeps the harmless
    library notices (:data:`elora_ray.runlog.HARMLESS_LIBRARY_MESSAGES`) off the console, unless
    ``--verbose``, or unless a submitted job's own runtime environment already sets a setup hook
    (Ray refuses to merge two)."""
    from .runlog import is_verbose

    if is_verbose():
        return {}
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job:
        try:
            if "worker_process_setup_hook" in (json.loads(job).get("runtime_env") or {}):
                return {}
        except (ValueError, AttributeError):
            return {}
    return {"worker_process_setup_hook": WORKER_SETUP_HOOK}


_LOCAL_INSTANCE = False


def started_local_instance() -> bool:
    """Whether this process started its own Ray on this machine (no cluster to autoscale)."""
    return _LOCAL_INSTANCE


def ensure_ray(cfg: RayConfig | None = None) -> None:
    global _LOCAL_INSTANCE
    import ray

    quiet_ray_logs()
    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # Workers must import elora_ray the same way the driver does (editable install or cwd).
    kwargs: dict = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.WARNING}
    hook = worker_runtime_env()
    if address:
        ray.init(address=address, logging_level=logging.WARNING, **({"runtime_env": hook} if hook else {}))
        log.info("connected to Ray at %s", address)
    else:
        if cfg.num_cpus is not None:
            kwargs["num_cpus"] = cfg.num_cpus
        if hook:
            kwargs["runtime_env"] = hook
        ray.init(**kwargs)
        _LOCAL_INSTANCE = True
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


def largest_node_cpus() -> int:
    """CPUs of the largest alive node (what one process can be given at most)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return int(max((n.get("Resources", {}).get("CPU", 0) for n in nodes), default=0))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def _sees_file(path: str, token: str) -> bool:
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def probe_nodes(path: str, token: str, timeout_s: float = 120.0) -> dict[str, bool]:
    """Node id → whether a 0-CPU task pinned to that node reads ``token`` from ``path``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0, max_retries=0)(_sees_file)
    refs = {node: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(path, token)
            for node in nodes}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    done = set(ready)
    return {node: (ray.get(ref) if ref in done else False) for node, ref in refs.items()}


def check_shared_storage(run_dir: str | Path, probe: Callable[[str, str], dict[str, bool]] | None = None,
                         name: str | None = None, fix: str | None = None) -> int:
    """On a multi-node Ray cluster, stop at once unless every node sees ``run_dir``.

    Stages write their artifacts under the run directory from whichever node runs them, so it must
    be on storage every node mounts at the same path. A marker file is written by the driver and
    read back on each node by a pinned 0-CPU task. Returns the number of nodes checked (0: one
    node or no Ray connection, nothing to check). ``name`` and ``fix`` replace the run directory's
    name and the advice in the error (a bucket run names its URI and working copy).
    """
    import ray

    if not ray.is_initialized() or sum(1 for n in ray.nodes() if n.get("Alive")) < 2:
        return 0
    import uuid

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    marker = run_dir / f".visible-{token}"
    marker.write_text(token)
    try:
        seen = (probe or probe_nodes)(str(marker), token)
    finally:
        marker.unlink(missing_ok=True)
    blind = sorted(node for node, ok in seen.items() if not ok)
    if blind:
        addr = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes()}
        where = ", ".join(f"{addr.get(n, '?')} ({n[:8]})" for n in blind)
        raise ConfigError(f"--out {name or run_dir} is not visible from {len(blind)} of {len(seen)} Ray nodes: {where}. "
                          + (fix or "The run directory must be on storage every node mounts at the same path "
                             "(NFS, EFS, a ReadWriteMany volume; see docs/operations.md)"))
    log.info("run directory %s is visible from all %d Ray nodes", run_dir, len(seen))
    return len(seen)
