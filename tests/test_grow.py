"""Growing a finished run (``elora add-task`` / ``remove-task``): the placement rule on planted
matrices, the up-front refusals, and end to end on a tiny model — only the changed group is
retrained, everything kept is reused byte for byte, the predictor agrees with the evaluation, the
source run is untouched, a killed grow resumes, and removing the task again works the same way."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from elora_ray.errors import ConfigError
from elora_ray.grow.place import place_task, place_tasks

TINY_SETS = ["model.name_or_path=tiny-bert", "featurize.dim=32", "featurize.shard_size=16", "cluster.num_groups=2",
             "train.epochs=2", "train.lr=3e-3", "train.batch_size=8", "boost.steps=2", "evaluate.batch_size=32",
             "baselines.methods=[single_adapter]"]


def planted(sizes: list[int], within: float = 0.8, between: float = 0.1, noise: float = 0.03, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    A = np.where(labels[:, None] == labels[None, :], within, between) + rng.normal(0, noise, (len(labels),) * 2)
    A = (A + A.T) / 2
    np.fill_diagonal(A, 1.0)
    return A


def test_a_task_from_a_planted_block_joins_that_block():
    A = planted([3, 3, 3])
    names = [f"t{i}" for i in range(9)]
    groups = [names[0:3], names[3:6], ["t6", "t7"]]  # t8 (block 2) is the new task
    p = place_task(A, names, groups, "t8")
    assert (p.group, p.new_group) == (2, False)
    assert p.affinity_to_groups[2] > p.threshold > max(p.affinity_to_groups[:2])


def test_a_task_unlike_every_group_starts_its_own_and_the_next_like_it_joins_it():
    A = planted([3, 3, 2])  # tasks 6 and 7 form a third block that no existing group holds
    names = [f"t{i}" for i in range(8)]
    groups, placements = place_tasks(A, names, [names[0:3], names[3:6]], ["t6", "t7"])
    assert [p.new_group for p in placements] == [True, False]
    assert groups == [names[0:3], names[3:6], ["t6", "t7"]]
    assert "own" in placements[0].rule


def test_with_a_fixed_number_of_groups_the_task_joins_the_nearest():
    A = planted([3, 3, 2])
    names = [f"t{i}" for i in range(8)]
    p = place_task(A, names, [names[0:3], names[3:6]], "t6", fixed_m=True)
    assert not p.new_group and p.group in (0, 1)
    assert p.group == int(np.argmax(p.affinity_to_groups))


def test_one_group_uses_no_transfer_as_the_outsider_level():
    A = planted([3, 1], within=0.6, between=0.0)
    names = ["a", "b", "c", "x"]
    assert place_task(A, names, [["a", "b", "c"]], "x").new_group
    B = planted([4], within=0.6)
    assert not place_task(B, names, [["a", "b", "c"]], "x").new_group


# --- end to end on a tiny model --------------------------------------------------------------

def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and "tensorboard" not in p.parts}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished tiny run on three tasks of an exported suite, and configs with the fourth added."""
    from elora_ray.cli import main
    from elora_ray.config import SuiteConfig
    from elora_ray.tasks.export import export_suite

    root = tmp_path_factory.mktemp("grow")
    path = export_suite(SuiteConfig(samples_per_task=48, tasks_per_group=[2, 2]), root / "suite")
    full = yaml.safe_load(path.read_text())
    planted_groups = json.loads((root / "suite" / "groups.json").read_text())["planted_groups"]
    new = full["tasks"][-1]["name"]
    (root / "suite" / "base.yaml").write_text(yaml.safe_dump(dict(full, tasks=full["tasks"][:-1])))
    (root / "suite" / "full.yaml").write_text(yaml.safe_dump(full))
    run = root / "base"
    sets = [a for s in TINY_SETS for a in ("--set", s)]
    assert main(["run", "--config", str(root / "suite" / "base.yaml"), "--out", str(run), *sets]) == 0
    return {"root": root, "run": run, "new": new, "planted": planted_groups, "sets": sets,
            "full": root / "suite" / "full.yaml"}


@pytest.mark.slow
def test_add_task_retrains_only_its_group_and_reuses_everything_else(base_run, monkeypatch):
    from elora_ray.cli import main
    from elora_ray.ensemble.members import load_members, load_weights
    from elora_ray.ensemble.predictor import EnsemblePredictor
    from elora_ray.grow import stage as grow_stage

    run, new = base_run["run"], base_run["new"]
    before = _tree_digest(run)
    out = base_run["root"] / "grown"
    calls = {"n": 0}
    real = grow_stage.STEP_FUNCTIONS["outputs"]

    def killed_once(*args):  # the grow is killed after training: the rerun resumes there
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setitem(grow_stage.STEP_FUNCTIONS, "outputs", killed_once)
    argv = ["add-task", "--run", str(run), "--out", str(out), "--config", str(base_run["full"]), *base_run["sets"]]
    assert main(argv) == 130
    work = out.parent / f".{out.name}.grow"
    assert json.loads((work / "grow" / "state.json").read_text())["done"][-1] == "train" and not out.exists()
    assert main(argv) == 0
    assert calls["n"] == 2
    assert _tree_digest(run) == before  # the source run is exactly as it was

    old, grown = load_members(run), load_members(out)
    home = next(g for g in base_run["planted"] if new in g)
    grown_group = next(g for g in grown.groups if new in g.tasks)
    assert set(grown_group.tasks) <= set(home)  # it joined the group of its own source
    hist = json.loads((out / "grow" / "history.json").read_text())["grows"][0]
    assert hist["added"] == [new] and len(hist["changed_groups"]) == 1
    # the unchanged group kept its adapter and learners; the changed one was retrained from its old adapter
    kept = [g for g in grown.groups if new not in g.tasks]
    assert {g.base for g in kept} <= {g.base for g in old.groups}
    assert [[lr.job_id for lr in g.learners] for g in kept] == [
        [lr.job_id for lr in o.learners] for o in old.groups if o.base in {g.base for g in kept}]
    retrained = json.loads((out / "train" / "jobs" / f"{grown_group.base}.json").read_text())
    assert retrained["job"]["init_from"] in [g.base for g in old.groups]
    assert sorted(p.name for p in (out / "adapters").iterdir()) == sorted(
        [p.name for p in (run / "adapters").iterdir()] + hist["retrained"])
    # kept outputs: old rows identical, the new task's validation/test rows added
    for job in [kept[0].base, old.reference]:
        a, b = pq.read_table(run / "outputs" / f"{job}.parquet"), pq.read_table(out / "outputs" / f"{job}.parquet")
        assert b.slice(0, a.num_rows).equals(a)
        assert set(b.slice(a.num_rows)["task"].to_pylist()) == {new}
    # the kept tasks' features are the same files; the new task has its own
    for p in (run / "features" / "train").rglob("*.parquet"):
        assert (out / "features" / "train" / p.relative_to(run / "features" / "train")).read_bytes() == p.read_bytes()
    assert list((out / "features" / "train" / new).glob("part-*.parquet"))
    # weights: kept where nothing they combine changed, refit for the new task
    w_old, w_new = load_weights(run)["tasks"], load_weights(out)["tasks"]
    assert new in hist["weights_refit"]
    for name in hist["weights_kept"]:
        assert w_new[name]["validation_loss"] == w_old[name]["validation_loss"]
    # the predictor serves the grown run and agrees with its evaluation on the new task
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert "single_adapter" not in evaluation["methods"]  # the baselines were for the old task list
    pred = EnsemblePredictor(out)
    test = pq.read_table(out / "data" / new / "test.parquet").to_pylist()
    got = pred.predict(new, [r["text"] for r in test])
    acc = float(np.mean([g == r["label"] for g, r in zip(got, test)]))
    assert acc == pytest.approx(evaluation["methods"]["ensemble"]["per_task"][new], abs=1e-9)
    # and the export of the grown run (PEFT adapters + its own loader) gives the predictor's logits
    import importlib.util

    from elora_ray.export import export_run

    export_run(out, base_run["root"] / "export")
    spec = importlib.util.spec_from_file_location("grown_loader", base_run["root"] / "export" / "load_ensemble.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    texts = [r["text"] for r in test]
    np.testing.assert_allclose(np.asarray(loader.load_ensemble(base_run["root"] / "export").logits(new, texts)),
                               pred.predict_logits(new, texts), atol=1e-4)

    # removing it again (in place): its group is retrained without it, the other group untouched
    assert main(["remove-task", "--run", str(out), "--task", new]) == 0
    after = load_members(out)
    assert all(new not in g.tasks for g in after.groups)
    assert [g.base for g in after.groups if g.base == kept[0].base] == [kept[0].base]
    assert json.loads((out / "grow" / "history.json").read_text())["grows"][1]["removed"] == [new]
    assert new not in json.loads((out / "data" / "manifest.json").read_text())["tasks"]
    remaining = [t for g in after.groups for t in g.tasks]
    ev = json.loads((out / "evaluation.json").read_text())["methods"]["ensemble"]["per_task"]
    assert sorted(ev) == sorted(remaining)
    assert EnsemblePredictor(out).predict(remaining[0], ["a short text"])[0] in EnsemblePredictor(out).labels(remaining[0])


@pytest.mark.slow
def test_grow_refuses_other_changes_and_same_tasks_before_writing(base_run, tmp_path):
    from elora_ray.config import load_config
    from elora_ray.grow.change import task_change, without_tasks

    run = base_run["run"]
    sets = [s for s in TINY_SETS]
    full = load_config(base_run["full"], sets)
    with pytest.raises(ConfigError, match="adapter.rank"):
        task_change(run, load_config(base_run["full"], [*sets, "adapter.rank=8"]))
    same = yaml.safe_load(base_run["full"].read_text())
    same["tasks"] = same["tasks"][:-1]
    (base_run["full"].parent / "same.yaml").write_text(yaml.safe_dump(same))
    with pytest.raises(ConfigError, match="nothing to add or remove"):
        task_change(run, load_config(base_run["full"].parent / "same.yaml", sets))
    change = task_change(run, load_config(base_run["full"], [*sets, "train.num_workers=1"]))  # resources may differ
    assert change.added == [base_run["new"]] and change.removed == []
    assert task_change(run, full).new_names[-1] == base_run["new"]
    with pytest.raises(ConfigError, match="not in"):
        without_tasks(run, ["nope"])


@pytest.mark.slow
def test_add_task_refuses_changed_data_of_a_kept_task(base_run, tmp_path):
    from elora_ray.config import load_config
    from elora_ray.grow import grow_run

    suite = tmp_path / "suite"
    shutil.copytree(base_run["root"] / "suite", suite)
    cfg = yaml.safe_load((suite / "full.yaml").read_text())
    first = cfg["tasks"][0]
    with open(suite / first["train"], "a") as f:
        f.write(json.dumps({"id": "extra", "text": "one more sample", "label": first["labels"][0]}) + "\n")
    with pytest.raises(ConfigError, match=f"task '{first['name']}'"):
        grow_run(base_run["run"], load_config(suite / "full.yaml", TINY_SETS), tmp_path / "out")
    assert sorted(tmp_path.iterdir()) == [suite]  # nothing written: no grown run, no work copy
