import numpy as np

from elora_ray.config import SuiteConfig
from elora_ray.tasks import suite


def test_suite_shape_and_determinism():
    cfg = SuiteConfig(samples_per_task=200, seed=1)
    a, b = suite.generate_suite(cfg), suite.generate_suite(cfg)
    assert 8 <= len(a) <= 12
    assert [t.name for t in a] == [t.name for t in b]
    assert all(x.splits == y.splits for x, y in zip(a, b))
    assert len({t.name for t in a}) == len(a)
    groups = suite.planted_groups(cfg)
    assert sorted(n for g in groups for n in g) == sorted(t.name for t in a)
    for t in a:
        ids = [e.sample_id for s in t.splits.values() for e in s]
        assert len(ids) == len(set(ids))
        assert {e.label for e in t.splits["train"]} == set(t.labels)


def test_different_seed_gives_different_data():
    a = suite.generate_suite(SuiteConfig(seed=0))[0]
    b = suite.generate_suite(SuiteConfig(seed=1))[0]
    assert [e.text for e in a.splits["train"]] != [e.text for e in b.splits["train"]]


def _counts(text: str) -> np.ndarray:
    words = text.replace(",", " ").replace(".", " ").split()
    return np.array([sum(w in lex for w in words) for lex in (suite.P1, suite.P2, suite.N1, suite.N2)])


def test_planted_rules_hold_up_to_label_noise():
    """Labels follow the family rule (independently recomputed) except for the label noise."""
    cfg = SuiteConfig(samples_per_task=400, label_noise=0.05)
    rules = {
        "polarity": np.array([1, 1, -1, -1]),
        "irony": np.array([1, -1, -1, 1]),
    }
    for t in suite.generate_suite(cfg):
        family = t.name.split("_")[0]
        if family not in rules:
            continue
        agree = [
            (rules[family] @ _counts(e.text) > 0) == (e.label == "positive") for e in t.splits["train"]
        ]
        assert 0.85 < np.mean(agree) < 1.0, (t.name, np.mean(agree))


def test_conflicting_families_disagree_on_shared_inputs():
    """polarity and irony label the same sentence differently about half the time (conflict)."""
    cfg = SuiteConfig(samples_per_task=400, label_noise=0.0)
    pol = next(t for t in suite.generate_suite(cfg) if t.name.startswith("polarity"))
    v1, v2 = np.array([1, 1, -1, -1]), np.array([1, -1, -1, 1])
    c = [_counts(e.text) for e in pol.splits["train"]]
    decided = [(v1 @ x > 0, v2 @ x > 0) for x in c if v2 @ x != 0]
    disagreement = np.mean([a != b for a, b in decided])
    assert 0.3 < disagreement < 0.7


def test_too_many_groups_rejected():
    import pytest

    with pytest.raises(ValueError, match="at most"):
        suite.task_layout(SuiteConfig(tasks_per_group=[1, 1, 1, 1, 1]))
