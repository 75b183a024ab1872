"""The honesty numbers of the evaluation: most-common-label baseline and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from elora_ray.evaluate.uncertainty import at_majority, bootstrap_average, bootstrap_difference, majority_baseline
from elora_ray.tasks.schema import Example, TaskData


def _task(name, train_labels, test_labels):
    ex = lambda split, labs: [Example(sample_id=f"{name}/{split}/{i}", text="x", label=l) for i, l in enumerate(labs)]  # noqa: E731
    return TaskData(name=name, labels=["neg", "pos"], splits={"train": ex("train", train_labels), "validation": [],
                                                               "test": ex("test", test_labels)}, notes=[], sources={})


def test_majority_uses_the_training_label_and_scores_it_on_test():
    t = _task("t", ["pos", "pos", "neg"], ["neg", "neg", "pos", "neg"])
    m = majority_baseline([t], "test")["t"]
    assert m == {"label": "pos", "accuracy": 0.25, "samples": 4}
    tie = majority_baseline([_task("u", ["pos", "neg"], ["neg"])], "test")["u"]
    assert tie["label"] == "neg"  # ties go to the first label in the task's label order
    assert at_majority({"t": 0.5, "u": 0.9}, {"t": m, "u": tie}) == ["u"]  # u: always "neg" scores 1.0 there


def test_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    n, p = 400, 0.7
    correct = {"a": (rng.random(n) < p).astype(float), "b": np.ones(200)}
    lo, hi = bootstrap_average(correct, resamples=4000, seed=1)
    mean_a = correct["a"].mean()
    point = (mean_a + 1.0) / 2
    assert lo < point < hi
    # only task a varies: half-width ≈ 1.96 · sqrt(p(1-p)/n) / 2 (a is half of the average)
    expected = 1.96 * np.sqrt(mean_a * (1 - mean_a) / n) / 2
    assert (hi - lo) / 2 == pytest.approx(expected, rel=0.15)
    assert bootstrap_average({"c": np.ones(50)}, resamples=200) == (1.0, 1.0)


def test_paired_difference_is_exact_when_one_method_fixes_samples():
    rng = np.random.default_rng(2)
    base = (rng.random(300) < 0.6).astype(float)
    better = base.copy()
    wrong = np.flatnonzero(base == 0)[:30]
    better[wrong] = 1.0  # fixes 30 of 300 samples and breaks none
    d = bootstrap_difference({"t": better}, {"t": base}, resamples=2000)
    assert d["difference"] == pytest.approx(0.1)
    assert 0 < d["ci95"][0] < 0.1 < d["ci95"][1]  # strictly positive: the paired interval sees it
    same = bootstrap_difference({"t": base}, {"t": base}, resamples=100)
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError):
        bootstrap_difference({"t": base}, {"t": base[:-1]})


def test_benchmarks_paired_interval_is_scipys_one_sample_t_interval(monkeypatch):
    """The per-seed paired comparison the benchmarks print (ensemble − baseline, adapter − θ*)."""
    from pathlib import Path

    from scipy import stats

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # the repository's benchmarks/

    from benchmarks.common import paired_stats

    d = [0.012, -0.003, 0.004, 0.009, 0.001]
    p = paired_stats(d)
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert p["ci95"] == pytest.approx([ci.low, ci.high]) and p["mean"] == pytest.approx(np.mean(d))
    assert p["a_ahead"] == 4 and p["seeds"] == 5
    assert paired_stats([0.01])["ci95"] is None  # one seed: no interval
    assert paired_stats([0.1 + 0.2 - 0.3, 0.0])["per_seed"] == [0.0, 0.0]  # float noise of equal accuracies is 0


def test_bootstrap_resamples_whole_units_when_samples_share_one():
    """20 passages of 10 questions each, all answered alike within a passage: the information is that
    of 20 samples, and the unit bootstrap's interval has the width of 20 independent samples, where
    resampling the 200 samples one by one would be about sqrt(10) times too narrow."""
    rng = np.random.default_rng(1)
    per_unit = (rng.random(20) < 0.5).astype(float)
    correct = {"t": np.repeat(per_unit, 10)}
    units = {"t": np.repeat([f"p{i}" for i in range(20)], 10)}
    lo, hi = bootstrap_average(correct, resamples=4000, units=units)
    ref_lo, ref_hi = bootstrap_average({"t": per_unit}, resamples=4000)  # the 20 passages as samples
    assert hi - lo == pytest.approx(ref_hi - ref_lo, rel=0.15)
    naive_lo, naive_hi = bootstrap_average(correct, resamples=4000)
    assert (hi - lo) > 2.5 * (naive_hi - naive_lo)
    # the paired difference resamples the same units for both methods
    other = {"t": np.repeat(1 - per_unit, 10)}
    d = bootstrap_difference(correct, other, resamples=4000, units=units)
    d_ref = bootstrap_difference({"t": per_unit}, {"t": 1 - per_unit}, resamples=4000)
    assert d["difference"] == pytest.approx(d_ref["difference"])
    assert d["ci95"][1] - d["ci95"][0] == pytest.approx(d_ref["ci95"][1] - d_ref["ci95"][0], rel=0.15)
    # without units, or with one unit per sample, nothing changes
    solo = {"t": np.array([f"s{i}" for i in range(200)])}
    assert bootstrap_average(correct, units=solo) == pytest.approx(bootstrap_average(correct), abs=0.02)



def test_sample_units_follow_the_outputs_sample_order():
    from elora_ray.ensemble.outputs import TaskOutputs
    from elora_ray.evaluate.uncertainty import sample_units

    rows = [Example(sample_id=f"m/v/{i}", text="x", label="pos", unit=f"f:{i // 2}") for i in range(4)]
    grouped = TaskData(name="m", labels=["neg", "pos"], splits={"train": [], "validation": [], "test": rows},
                       notes=[], sources={})
    plain = _task("p", ["pos"], ["neg", "pos"])
    outs = {"m": TaskOutputs(np.array(["m/v/3", "m/v/0", "m/v/2", "m/v/1"]), np.zeros(4, np.int64), np.zeros((4, 2))),
            "p": TaskOutputs(np.array(["p/test/0", "p/test/1"]), np.zeros(2, np.int64), np.zeros((2, 2)))}
    units = sample_units([grouped, plain], "test", outs)
    assert units["m"].tolist() == ["f:1", "f:0", "f:1", "f:0"] and units["p"] is None
