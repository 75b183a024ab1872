"""A fixed pool of Ray actors that serves many more clients than it has workers.

Like Flower's simulation engine: W long-lived actors each hold the base model once; a client
is only data, instantiated on demand inside whichever actor picks up its call. Calls are
scheduled as actors free up (at most ``depth`` in flight per actor). A call that raises —
or whose actor dies, in which case the actor is replaced — is retried up to ``max_retries``
times and then *excluded*: it is logged and reported back, and the round goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass
class PoolResult:
    results: dict[Any, Any] = field(default_factory=dict)
    """key → return value, for the calls that succeeded."""
    failed: dict[Any, str] = field(default_factory=dict)
    """key → last error, for the calls excluded after their retries."""
    retries: int = 0


class ActorPool:
    """``ActorPool(cls, args, workers)``; ``map(method, items)`` with ``items = [(key, args), ...]``."""

    def __init__(self, actor_cls, init_args: tuple = (), workers: int = 1, *, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, max_retries: int = 1, depth: int = 2) -> None:
        import ray

        opts = {"num_cpus": num_cpus, "max_restarts": 0, **({"num_gpus": num_gpus} if num_gpus > 0 else {})}
        self._remote = ray.remote(**opts)(actor_cls) if not hasattr(actor_cls, "remote") else actor_cls.options(**opts)
        self._init_args = init_args
        self.max_retries = max_retries
        self.depth = max(1, depth)
        self.actors = [self._remote.remote(*init_args) for _ in range(max(1, workers))]
        self.replaced = 0

    @property
    def size(self) -> int:
        return len(self.actors)

    def _replace(self, i: int) -> None:
        import ray

        try:
            ray.kill(self.actors[i])
        except Exception:  # noqa: BLE001 - already dead
            pass
        self.actors[i] = self._remote.remote(*self._init_args)
        self.replaced += 1

    def map(self, method: str, items: Iterable[tuple[Any, tuple]], *, desc: str | None = None,
            on_result: Callable[[Any, Any], None] | None = None) -> PoolResult:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        # queue entries: (key, args, attempt, suspect). A call that was in flight on an actor that
        # died is "suspect": it runs again alone on an actor, so a death is only ever charged to
        # the call that caused it, never to calls that merely shared the actor.
        queue = [(key, args, 0, False) for key, args in items]
        queue.reverse()  # pop() from the end keeps the given order
        out = PoolResult()
        inflight: dict[Any, tuple[int, Any, Any, tuple, int, bool]] = {}  # ref → (actor index, actor, key, args, attempt, alone)
        load = [0] * len(self.actors)
        alone = [False] * len(self.actors)  # actor i runs one suspect call and nothing else
        reasons: dict[Any, list[str]] = {}  # every failure of a client, in order (the report keeps them all)
        bar = tqdm(total=len(queue), desc=desc, unit="client", disable=desc is None, leave=False)
        try:
            while queue or inflight:
                for i in range(len(self.actors)):
                    while queue and load[i] < self.depth and not alone[i]:
                        key, args, attempt, suspect = queue[-1]
                        if suspect and load[i] > 0:
                            break  # wait until this actor is idle
                        queue.pop()
                        ref = getattr(self.actors[i], method).remote(*args)
                        inflight[ref] = (i, self.actors[i], key, args, attempt, suspect)
                        load[i] += 1
                        if suspect:
                            alone[i] = True
                            break
                done, _ = ray.wait(list(inflight), num_returns=1)
                ref = done[0]
                i, actor, key, args, attempt, was_alone = inflight.pop(ref)
                if self.actors[i] is actor:
                    load[i] -= 1
                    if was_alone:
                        alone[i] = False
                try:
                    value = ray.get(ref)
                except (RayTaskError, RayActorError) as exc:
                    reason = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
                    if isinstance(exc, RayActorError):
                        if self.actors[i] is actor:
                            self._replace(i)  # the other calls on this actor fail too and come back here
                            load[i], alone[i] = 0, False
                        if not was_alone:
                            queue.append((key, args, attempt, True))  # maybe collateral: rerun alone, uncharged
                            continue
                    reasons.setdefault(key, []).append(reason)
                    if attempt < self.max_retries:
                        out.retries += 1
                        log.warning("client %s failed (%s); retrying (%d/%d)", key, reason, attempt + 1, self.max_retries)
                        queue.append((key, args, attempt + 1, isinstance(exc, RayActorError)))
                    else:
                        out.failed[key] = " | ".join(reasons[key])
                        log.warning("client %s failed %d time(s) (%s); excluded from this round", key, attempt + 1, out.failed[key])
                        bar.update(1)
                    continue
                out.results[key] = value
                if on_result is not None:
                    on_result(key, value)
                bar.update(1)
        finally:
            bar.close()
        return out

    def broadcast(self, method: str, *args) -> list:
        """Call ``method(*args)`` on every actor (e.g. to load shared data); returns their results."""
        import ray

        return ray.get([getattr(a, method).remote(*args) for a in self.actors])

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001
                pass
        self.actors = []
