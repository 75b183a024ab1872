"""``elora serve``: deploy the application on this machine's Ray (or the cluster of ``$RAY_ADDRESS``,
e.g. inside ``ray job submit``) and serve until interrupted."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import yaml

from ..errors import ConfigError
from .options import ServeOptions

_STOP = threading.Event()


def request_stop() -> None:
    """Make a running :func:`serve_run` delete its application and return (what SIGINT/SIGTERM do)."""
    _STOP.set()


def load_options(path: Path | None, flags: dict) -> ServeOptions:
    """Options from ``--options FILE.yaml`` (the keys of :class:`ServeOptions`), then the flags given."""
    base: dict = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"--options {path}: file not found")
        try:
            base = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--options {path}: not valid YAML ({exc})") from None
        if not isinstance(base, dict):
            raise ConfigError(f"--options {path}: must be a mapping of serve options")
    merged = {**base, **{k: v for k, v in flags.items() if v is not None}}
    if "run" in merged:
        merged["run"] = str(Path(merged["run"]).expanduser().resolve())
    return ServeOptions.parse(merged)


def serve_run(opts: ServeOptions, *, host: str, port: int, name: str, route_prefix: str, detach: bool) -> None:
    """Deploy, print the URL, and block until SIGINT/SIGTERM (or :func:`request_stop`); then delete the
    application (with ``detach`` it stays deployed on the cluster and this returns at once)."""
    from .. import raysession
    from .metadata import read_metadata

    _STOP.clear()
    meta = read_metadata(opts.run)  # fail before starting Ray when the run is not servable
    import ray

    own_ray = not ray.is_initialized()  # Serve is shut down at the end only on a Ray this call started
    raysession.ensure_ray()
    if detach and raysession.started_local_instance():
        raise ConfigError("--detach needs a running cluster to leave the application on (set RAY_ADDRESS or use "
                          "`ray job submit`); without one the server lives as long as this command")
    from ray import serve

    from .app import application

    serve.start(http_options={"host": host, "port": port})
    try:  # Serve already running on the cluster keeps its own HTTP options (Serve logs a warning)
        from ray.serve.context import _get_global_client

        http = _get_global_client().http_config
        host, port = http.host or host, http.port or port
    except Exception:  # noqa: BLE001 - only the printed URL depends on it
        pass
    serve.run(application(opts), name=name, route_prefix=route_prefix, blocking=False)
    url = f"http://{host}:{port}{route_prefix.rstrip('/')}"
    print(f"elora serve: run {opts.run} (fingerprint {meta['fingerprint']}, {len(meta['tasks'])} tasks) at {url}/predict; "
          f"{opts.replicas} model replica(s) with {opts.num_cpus:g} CPU(s), {opts.num_gpus:g} GPU(s) each", flush=True)
    if detach:
        print(f"elora serve: application {name!r} stays deployed; remove it with `serve shutdown` or "
              f"`python -c \"from ray import serve; serve.delete('{name}')\"` on the cluster", flush=True)
        return
    stop = _STOP
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    print(f"elora serve: stopping {name!r}", flush=True)
    serve.delete(name)
    if own_ray and raysession.started_local_instance():
        serve.shutdown()
