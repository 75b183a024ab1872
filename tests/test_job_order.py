"""Adapter jobs start longest first, so the longest does not run alone at the end of the pool."""

from elora_ray.config import load_config
from elora_ray.train.jobs import AdapterJob
from elora_ray.train.runner import estimated_job_cost

MANIFEST = {"tasks": {name: {"sizes": {"train": n, "validation": n // 5, "test": n // 5}}
                      for name, n in {"a": 300, "b": 250, "c": 100, "d": 400}.items()}}


def _job(id, tasks, **kw):
    return AdapterJob(id=id, method="m", tasks=tasks, output_tasks={"test": tasks}, **kw)


def test_cost_follows_training_samples_times_epochs():
    cfg = load_config(None, ["train.epochs=6"])
    single, group, small = _job("single", ["a", "b", "c", "d"]), _job("g0", ["a", "d"]), _job("g1", ["c"])
    ref = AdapterJob(id="theta_star", method="m", tasks=[], kind="reference",
                     output_tasks={"test": ["a", "b", "c", "d"], "validation": ["a", "b", "c", "d"]})
    costs = {j.id: estimated_job_cost(cfg, j, MANIFEST) for j in (single, group, small, ref)}
    assert sorted(costs, key=costs.get, reverse=True) == ["single", "g0", "g1", "theta_star"]
    assert costs["g0"] == 700 * 6 + 140 / 3
    # a job's own epochs and a replayed sample cap count
    short = _job("short", ["a", "d"], epochs=1.0)
    replay = _job("replay", ["a", "d"], train_samples={"a": 30})
    assert estimated_job_cost(cfg, short, MANIFEST) == 700 + 140 / 3
    assert estimated_job_cost(cfg, replay, MANIFEST) == 430 * 6 + 140 / 3
