"""Benchmark tables say how much their numbers mean: the most-common-label row, test-sample intervals,
tasks at that level, and the kept validation check by the setting's own early-stopping metric."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # the repository's benchmarks/
    import benchmarks.ensemble_accuracy as ea
    import benchmarks.training_sweep as ts

    return ea, ts


def seed_report(ens: float, single: float, sst2: float) -> dict:
    def method(acc, per_task, at_majority):
        return {"avg_accuracy": acc, "per_task": per_task, "train_flops": 1e12, "peak_memory_mb": 100.0, "wall_s": 10.0,
                "adapters": 1, "adapter_parameters": 10, "ci95": [acc - 0.03, acc + 0.03], "tasks_at_majority": at_majority}

    return {
        "methods": {"ensemble": method(ens, {"sst2": sst2, "cola": 0.70}, ["cola"]),
                    "single_adapter": method(single, {"sst2": sst2 - 0.02, "cola": 0.69}, ["cola"])},
        "ensemble_ablations": {"theta_star": {"avg_accuracy": 0.70}},
        "majority": {"per_task": {"sst2": {"label": "1", "accuracy": 0.55}, "cola": {"label": "1", "accuracy": 0.70}},
                     "avg_accuracy": 0.625},
        "comparisons": {"ensemble_minus_single_adapter": {"difference": ens - single, "ci95": [-0.01, 0.03]}},
    }


def test_ensemble_table_has_the_majority_row_intervals_and_flags(bench):
    ea, _ = bench
    reports = [seed_report(0.75, 0.74, 0.80), seed_report(0.76, 0.74, 0.82)]
    agg = ea.aggregate(reports)
    assert agg["majority"] == {"avg_accuracy": 0.625, "per_task": {"sst2": 0.55, "cola": 0.70}}
    data = {"aggregate": agg, "seeds": [3, 4], "config": "c.yaml", "overrides": [], "tasks": 2, "split": "test",
            "machine": {"cpu": "x", "cores": 2, "gpu": None, "date": "d"}, "groups": [[["sst2", "cola"]]] * 2,
            "per_seed": [{"seed": s, **r} for s, r in zip([3, 4], reports)]}
    md = ea.render("t", data)
    assert "| always the most common training label | 0.6250 |" in md
    assert "| EnsembleLoRA (ours) | 0.7550 ± 0.0071 | 0.720–0.780 | +0.0000 | 2 |" in md  # seed 3's interval; cola twice
    assert "| cola | 0.700 ≤ | 0.690 ≤ | 0.700 |" in md and "| sst2 | 0.810 | 0.790 | 0.550 |" in md
    assert "| 4 | +0.0200 | [-0.0100, +0.0300] |" in md  # the within-seed paired bootstrap
    # records made before the evaluation stored the majority: no row, no crash
    for r in reports:
        del r["majority"]
    assert "most common training label |" not in ea.render("t", {**data, "aggregate": ea.aggregate(reports)})


def test_sweep_reads_the_check_its_metric_kept(bench):
    _, ts = bench
    evals = [{"step": 0, "loss": 0.60, "accuracy": 0.70, "per_task": {"a": {"accuracy": 0.9}, "b": {"accuracy": 0.5}}},
             {"step": 10, "loss": 0.55, "accuracy": 0.72, "per_task": {"a": {"accuracy": 0.95}, "b": {"accuracy": 0.45}}},
             {"step": 20, "loss": 0.58, "accuracy": 0.71, "per_task": {"a": {"accuracy": 0.8}, "b": {"accuracy": 0.7}}}]
    assert ts.kept_check(evals, "loss")["step"] == 10
    assert ts.kept_check(evals, "accuracy")["step"] == 10
    assert ts.kept_check(evals, "task_accuracy")["step"] == 20  # (0.8 + 0.7) / 2 beats (0.95 + 0.45) / 2
    assert ts.task_accuracy(evals[2]) == pytest.approx(0.75)
    assert ts.task_accuracy({**evals[2], "task_accuracy": 0.5}) == 0.5  # the loop's own figure when recorded
    tied = [dict(e, loss=0.5) for e in evals]
    assert ts.kept_check(tied, "loss")["step"] == 0  # ties keep the first, as early stopping does
    # a point's own epochs win over --epochs
    assert "train.epochs=6.0" in ts.point_overrides({"epochs": 6.0, "lr": 1e-3}, 2.0)
    assert "train.epochs=2.0" in ts.point_overrides({"lr": 1e-3}, 2.0)


def without_training_stages(ts, monkeypatch, out: Path) -> None:
    """The sweep's pipeline stages, config loading and plotting replaced; its results (table and JSON) go to ``out``."""
    import json

    def write(name, data, md, **_):
        (out / f"{name}.md").write_text(md)
        (out / f"{name}.json").write_text(json.dumps(data))
        return out / f"{name}.md"

    monkeypatch.setattr(ts, "write_results", write)
    monkeypatch.setattr(ts, "plot", lambda path, data: None)
    monkeypatch.setattr(ts, "run_stages", lambda *a, **k: None)
    monkeypatch.setattr(ts, "load_config", lambda *a, **k: type("C", (), {"train": type("T", (), {
        "patience": 4, "early_stopping_metric": "task_accuracy"})()})())


def test_sweep_adds_seeds_to_a_recorded_sweep_without_training_it_again(bench, tmp_path, monkeypatch):
    """``--reuse-recorded``: recorded (seed, setting) rows with identical overrides are kept, not retrained;
    a row made with other overrides is trained again; the table says which rows were taken as recorded."""
    import json

    _, ts = bench
    monkeypatch.setattr(ts, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(ts, "RUNS", tmp_path / "runs")
    without_training_stages(ts, monkeypatch, tmp_path)
    trained = []

    def fake_point(cfg, overrides, seed, name, base, out):
        trained.append((seed, name))
        curve = [{"step": 0, "loss": 0.7, "accuracy": 0.6}]
        return {"point": name, "seed": seed, "overrides": overrides, "test_accuracy": 0.70 + seed / 100,
                "test_ci95": [0.6, 0.8], "test_per_task": {"a": 0.7}, "theta_star_accuracy": 0.65,
                "theta_star_per_task": {"a": 0.65}, "majority_accuracy": 0.5, "val_loss": 0.6, "val_accuracy": 0.7,
                "best_step": 5, "stopped_early": False, "train_seconds": 1.0, "curve": curve, "metric": "task_accuracy"}

    monkeypatch.setattr(ts, "run_point", fake_point)
    shared = [*ts.SHARED]
    acc = [*shared, *ts.point_overrides(ts.POINTS["acc_6ep_1e-3"], 3.0)]
    loss = [*shared, *ts.point_overrides(ts.POINTS["loss_6ep_1e-3"], 3.0)]
    recorded = [{**fake_point(None, acc, 0, "acc_6ep_1e-3", None, None), "code": "abc1234", "gain": 0.05},
                {**fake_point(None, loss, 0, "loss_6ep_1e-3", None, None), "gain": 0.04},
                {**fake_point(None, [*acc, "train.lr=0.5"], 1, "acc_6ep_1e-3", None, None), "gain": 0.0}]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "training_sweep_x.json").write_text(json.dumps({"rows": recorded}))
    trained.clear()
    ts.main(["--name", "x", "--points", "acc_6ep_1e-3", "--seeds", "0", "1", "2", "--reuse-recorded"])
    assert trained == [(1, "acc_6ep_1e-3"), (2, "acc_6ep_1e-3")]  # seed 0 recorded; seed 1's record ran otherwise
    md = (tmp_path / "training_sweep_x.md").read_text()
    assert "seed 0 loss_6ep_1e-3, seed 0 acc_6ep_1e-3 (code abc1234)." in md
    assert "| acc_6ep_1e-3 | +0.060 | [+0.035, +0.085] | 3/3 | 0: +0.050, 1: +0.060, 2: +0.070 |" in md  # paired over seeds
    trained.clear()
    ts.main(["--name", "y", "--points", "acc_6ep_1e-3", "--seeds", "0"])  # without the flag: nothing is reused
    assert trained == [(0, "acc_6ep_1e-3")]


def test_a_sweep_stopped_midway_keeps_the_seeds_it_finished(bench, tmp_path, monkeypatch):
    """Results are written after every seed: a failure (or a kill) in seed 1 leaves seed 0's row recorded,
    which ``--reuse-recorded`` then keeps instead of training it again."""
    import json

    _, ts = bench
    monkeypatch.setattr(ts, "RESULTS", tmp_path)
    monkeypatch.setattr(ts, "RUNS", tmp_path / "runs")
    without_training_stages(ts, monkeypatch, tmp_path)
    trained = []

    def fake_point(cfg, overrides, seed, name, base, out):
        if seed == 1 and "restart" not in trained:
            raise KeyboardInterrupt  # the sweep is stopped during seed 1
        trained.append(seed)
        return {"point": name, "seed": seed, "overrides": overrides, "test_accuracy": 0.7, "test_ci95": [0.6, 0.8],
                "test_per_task": {"a": 0.7}, "theta_star_accuracy": 0.65, "theta_star_per_task": {"a": 0.65},
                "majority_accuracy": 0.5, "val_loss": 0.6, "val_accuracy": 0.7, "best_step": 5,
                "stopped_early": False, "train_seconds": 1.0, "curve": [], "metric": "task_accuracy"}

    monkeypatch.setattr(ts, "run_point", fake_point)
    with pytest.raises(KeyboardInterrupt):
        ts.main(["--name", "x", "--points", "acc_6ep_1e-3", "--seeds", "0", "1"])
    rows = json.loads((tmp_path / "training_sweep_x.json").read_text())["rows"]
    assert [(r["seed"], r["point"]) for r in rows] == [(0, "acc_6ep_1e-3")]
    trained.clear()
    trained.append("restart")  # seed 1 no longer fails
    ts.main(["--name", "x", "--points", "acc_6ep_1e-3", "--seeds", "0", "1", "--reuse-recorded"])
    assert trained == ["restart", 1]  # seed 0 came from the record
    assert [r["seed"] for r in json.loads((tmp_path / "training_sweep_x.json").read_text())["rows"]] == [0, 1]


def test_grouping_oracle_scores_every_partition_by_its_blocks_adapters(monkeypatch):
    """Every set partition appears once (Bell numbers); a task is scored by the adapter of its own block; the
    validation-picked and the ensemble's partitions are placed on the test ranking."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import itertools

    import benchmarks.grouping_oracle as go

    assert [len(list(go.partitions(list("abcdef"[:n])))) for n in range(1, 6)] == [1, 2, 5, 15, 52]
    assert len({go.canonical(p) for p in go.partitions(list("abcde"))}) == 52
    tasks = ["a", "b", "c"]
    # a and b help each other on test (not on validation); c is best alone
    rows = []
    for k in (1, 2, 3):
        for sub in itertools.combinations(tasks, k):
            for t in sub:
                share = set(sub) == {"a", "b"}
                acc = 0.7 + (0.1 if share else 0.0) - (0.2 if t == "c" and k > 1 else 0.0)
                rows.append({"seed": 0, "type": "lora", "subset": list(sub), "task": t, "test_acc": acc,
                             "val_acc": 0.7 - (0.2 if t == "c" and k > 1 else 0.0), "test_loss": 1 - acc, "val_loss": 0.3})
    pt = {"tasks": tasks, "rows": rows}
    ens = {"seeds": [0], "groups": [[["a", "c"], ["b"]]], "variant_groups": {"paper": [[["a", "b"], ["c"]]]}}
    (case,) = go.analyse(pt, ens)["cases"]
    rows_by = {r["what"]: r for r in case["rows"]}
    assert case["partitions"] == 5
    assert rows_by["best on test"]["partition"] == [["a", "b"], ["c"]] and rows_by["paper"]["rank_on_test"] == 1
    assert rows_by["best on test"]["test_acc"] == pytest.approx(0.8 * 2 / 3 + 0.7 / 3)
    assert rows_by["first_order (ensemble)"]["test_acc"] == pytest.approx((0.7 + 0.5 + 0.7) / 3)
    assert rows_by["per-task adapters"]["test_acc"] == pytest.approx(0.7)
    random = next(r for r in case["rows"] if r["what"].startswith("random groups"))
    assert "into 2" in random["what"] and random["test_acc"] == pytest.approx(((0.8 * 2 + 0.7) + 2 * (0.7 + 0.5 + 0.7)) / 9)
    assert go.score_partitions(rows[:-1], tasks) is None  # a block's adapter missing


def test_grouping_oracle_across_seeds_measures_whether_the_target_replicates(monkeypatch):
    """A seed that repeats another's numbers replicates perfectly (Spearman +1, each best ranks 1st on the other);
    a seed whose sharing effects are reversed correlates at -1 and ranks the other's best last."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import itertools

    import benchmarks.grouping_oracle as go

    tasks = ["a", "b", "c"]
    effect = {frozenset("ab"): 0.10, frozenset("ac"): -0.05, frozenset("bc"): 0.02, frozenset("abc"): -0.10}
    rows = []
    for seed, sign in ((0, 1.0), (1, 1.0), (2, -1.0)):
        for k in (1, 2, 3):
            for sub in itertools.combinations(tasks, k):
                for t in sub:
                    acc = 0.7 + sign * effect.get(frozenset(sub), 0.0) + {"a": 0.0, "b": 0.01, "c": 0.02}[t]
                    rows.append({"seed": seed, "type": "lora", "subset": list(sub), "task": t, "test_acc": acc,
                                 "val_acc": acc, "test_loss": 1 - acc, "val_loss": 1 - acc})
    data = go.analyse({"tasks": tasks, "rows": rows}, None)
    by = {tuple(r["seeds"]): r for r in data["across_seeds"]}
    assert set(by) == {(0, 1), (0, 2), (1, 2)} and by[(0, 1)]["partitions"] == 5 and by[(0, 1)]["pairs"] == 3
    assert by[(0, 1)]["spearman_partitions_test_acc"] == pytest.approx(1.0)
    assert by[(0, 1)]["spearman_pair_gains_test_loss"] == pytest.approx(1.0)
    assert by[(0, 1)]["same_sign_pair_gains"] == 3
    assert by[(0, 1)]["best_of_first_ranks_on_second"] == 1 == by[(0, 1)]["best_of_second_ranks_on_first"]
    assert by[(0, 2)]["spearman_pair_gains_test_loss"] == pytest.approx(-1.0)
    assert by[(0, 2)]["same_sign_pair_gains"] == 0
    assert by[(0, 2)]["best_of_first_ranks_on_second"] == 5
    text = go.markdown("x", {**data, "machine": {"cpu": "c", "cores": 2, "date": "d"}, "inputs": [], "command": "c"})
    assert "Does the target replicate across seeds?" in text and "## Over seeds" in text
    # Over the three seeds, paired: the best-on-test partition is ahead of random groups in every seed, and one
    # adapter for all tasks differs from itself by exactly 0.
    over = {r["what"]: r for r in data["over_seeds"]}
    assert over["best on test"]["seeds"] == [0, 1, 2] and over["best on test"]["minus_random_groups"]["a_ahead"] == 3
    seed0 = {r["what"]: r for r in data["cases"][0]["rows"]}
    random0 = next(v for k, v in seed0.items() if k.startswith("random groups"))["test_acc"]
    assert over["per-task adapters"]["minus_random_groups"]["per_seed"][0] == pytest.approx(
        seed0["per-task adapters"]["test_acc"] - random0)
    assert over["one adapter"]["minus_one_adapter"]["mean"] == 0.0


def test_positive_transfer_rate_leaves_out_single_task_adapters_that_kept_the_start(monkeypatch):
    """A task whose own adapter kept θ* (best check 0) is "helped" by any trained partner: the rate over the
    references that trained leaves those (i, S) out, and the per-task table names the seeds."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import benchmarks.positive_transfer as pt

    def row(subset, task, loss, best=5):
        return {"seed": 0, "type": "lora", "subset": subset, "size": len(subset), "task": task, "test_loss": loss,
                "test_acc": 0.7, "val_loss": loss, "best_step": best}

    rows = [row(["a"], "a", 1.0, best=0), row(["b"], "b", 0.5), row(["c"], "c", 0.5),
            row(["a", "b"], "a", 0.6), row(["a", "b"], "b", 0.6),   # a "helped" (its reference kept θ*), b hurt
            row(["a", "c"], "a", 0.6), row(["a", "c"], "c", 0.4),   # a "helped", c helped
            row(["b", "c"], "b", 0.4), row(["b", "c"], "c", 0.6)]   # b helped, c hurt
    trans = pt.transfers(rows, 3)
    (s,) = pt.summarize(trans, [0], ["lora"])
    assert s["rate_test_loss"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert s["refs_kept_start"] == 2
    assert s["rate_test_loss_trained_refs"] == pytest.approx((0.0 + 1.0 + 0.5) / 3)
    (a, *_) = pt.per_task(rows, trans, {0: {"theta_star": None, "majority": {}}}, ["lora"])
    assert a["task"] == "a" and a["lora_single_kept_start"] == [0]


def test_positive_transfer_counts_only_complete_seeds_of_an_adapter_type(monkeypatch):
    """A seed whose adapters of one type are partly trained (e.g. only those the ensemble benchmark reused) is
    named and left out of the rates; before any seed is complete, everything so far is shown as progress."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from types import SimpleNamespace

    import benchmarks.positive_transfer as pt

    def plans(kind):
        return [{"type": kind, "subset": s, "job": SimpleNamespace(id=f"{kind}-{'+'.join(s)}")}
                for s in (["a"], ["b"], ["a", "b"])]

    seed_plans = {0: (None, plans("lora") + plans("qlora"), ""), 1: (None, plans("lora"), "")}
    rows = [{"seed": 0, "job": f"{k}-{j}"} for k in ("lora", "qlora") for j in ("a", "b", "a+b")]
    rows += [{"seed": 1, "job": "lora-a"}, {"seed": 1, "job": "lora-a+b"}]
    complete, incomplete = pt.completeness(seed_plans, rows)
    assert complete == {(0, "lora"), (0, "qlora")}
    assert incomplete == [{"seed": 1, "type": "lora", "done": 2, "planned": 3}]
    assert "Not counted until complete: lora seed 1 (2 of 3)" in pt._incomplete_note({"incomplete": incomplete})
    assert "progress so far" in pt._incomplete_note({"incomplete": incomplete, "partial": True})


def test_ensemble_levers_counts_early_stopping_ties_and_exact_logit_ties(tmp_path, monkeypatch):
    """The two scans `ensemble_levers` reports, against hand-built job records and outputs."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import benchmarks.ensemble_levers as el
    from elora_ray.layout import RunLayout

    layout = RunLayout(tmp_path)
    layout.job_records.mkdir(parents=True)

    def record(job, best, evals):
        metrics = {"best_step": best, "evals": [{"step": s, "task_accuracy": a, "loss": loss} for s, a, loss in evals]}
        layout.job_record(job).write_text(json.dumps({"id": job, "metrics": metrics}))

    record("kept-start", 0, [(0, 0.7, 1.05), (7, 0.7, 0.67), (14, 0.6, 0.6)])  # tie at a lower loss, kept θ*
    record("kept-later", 7, [(0, 0.5, 0.9), (7, 0.7, 0.6), (14, 0.7, 0.5)])    # tie after a trained check
    record("higher-loss", 0, [(0, 0.7, 0.6), (7, 0.7, 0.8)])                   # same accuracy, higher loss: no tie
    record("earlier-tie", 7, [(0, 0.7, 0.5), (7, 0.7, 0.6)])                   # only an earlier check ties: no tie
    record("one-check", 0, [(0, 0.7, 0.6)])                                     # not counted
    out = el.early_stopping_ties(tmp_path, "task_accuracy")
    assert (out["jobs"], sorted(out["tied"]), out["kept_start"]) == (4, ["kept-later", "kept-start"], ["kept-start"])

    layout.output("a").parent.mkdir(parents=True)
    pq.write_table(pa.table({"split": ["test", "test", "test", "validation"],
                             "logits": [[0.5, 0.5], [0.1, 0.2], [0.3, 0.3, 0.1], [1.0, 1.0]]}), layout.output("a"))
    pq.write_table(pa.table({"split": ["test"], "logits": [[0.2, 0.2 + 1e-7]]}), layout.output("b"))
    assert el.exact_logit_ties(tmp_path, "test") == {"rows": 4, "tied": 2}
