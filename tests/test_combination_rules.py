"""The combination weights and the boosting rule shared by the main pipeline and the federated
ensemble: the first-order solver against cvxpy, the line search against a grid, and the federated
client worker against the same rules computed here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import elora_ray.ensemble.weights as W
from elora_ray.boost.rule import line_search, residuals_from_log_odds, step_coefficient, worst_group
from elora_ray.config.training import BoostConfig
from elora_ray.ensemble.weights import WeightFitError, fit_task_weights, project_to_simplex, weights_objective


def _problem(rng, n, m, c, good=1):
    y = rng.integers(0, c, n)
    z = rng.normal(0, 2, (n, m, c))
    z[:, good, :] += 2 * np.eye(c)[y]
    if m > 2:  # a harmful member: its optimal weight is 0, on the simplex's boundary
        z[:, m - 1, :] -= 3 * np.eye(c)[y]
    return z, y


@pytest.mark.parametrize("shrink", [0.0, 0.1])
def test_first_order_weights_match_cvxpy(shrink):
    rng = np.random.default_rng(0)
    boundary = 0
    for _ in range(8):
        n, m, c = int(rng.integers(20, 150)), int(rng.integers(2, 6)), int(rng.integers(2, 7))
        z, y = _problem(rng, n, m, c)
        exact = fit_task_weights(z, y, 0, shrink, "CLARABEL")
        ours = fit_task_weights(z, y, 0, shrink, "first_order")
        assert ours.sum() == pytest.approx(1.0) and (ours >= 0).all()
        np.testing.assert_allclose(ours, exact, atol=2e-4)
        assert weights_objective(z, y, ours, shrink, 0) <= weights_objective(z, y, exact, shrink, 0) + 1e-7
        boundary += int((exact < 1e-6).any())
    assert boundary >= 1  # some optima lie on the simplex's boundary (a weight exactly 0)


def test_first_order_weights_in_chunks_of_float16_logits(monkeypatch):
    """A vocabulary-sized problem goes to the first-order solver under ``auto`` (never to cvxpy), in
    chunks of targets; float16 input gives the float64 optimum to float16 precision."""
    rng = np.random.default_rng(1)
    z, y = _problem(rng, 300, 3, 800)
    monkeypatch.setattr(W, "_cvxpy", lambda *a, **k: pytest.fail("auto sent a vocabulary-sized problem to cvxpy"))
    whole = fit_task_weights(z, y, 0, 0.0, "auto")
    monkeypatch.setattr(W, "CHUNK_ELEMENTS", 3 * 800 * 7)  # 7 targets at a time
    chunked = fit_task_weights(torch.tensor(z, dtype=torch.float16), torch.tensor(y), 0, 0.0, "auto")
    np.testing.assert_allclose(chunked, whole, atol=5e-3)
    assert whole[1] > 0.5 and whole[2] < 1e-6  # the informative member leads, the harmful one gets nothing
    with pytest.raises(WeightFitError, match="too many for cvxpy.*first_order"):
        fit_task_weights(np.zeros((2000, 3, 800)), np.zeros(2000, int), 0, 0.0, "CLARABEL")


def test_simplex_projection_is_the_closest_point():
    rng = np.random.default_rng(2)
    for _ in range(20):
        v = rng.normal(0, 2, 5)
        p = project_to_simplex(v)
        assert p.sum() == pytest.approx(1.0) and (p >= 0).all()
        for _ in range(50):  # no other point of the simplex is closer
            q = rng.dirichlet(np.ones(5))
            assert np.linalg.norm(v - p) <= np.linalg.norm(v - q) + 1e-12


def test_boosting_rule():
    b = BoostConfig(step_size=0.1)
    rho, coef = step_coefficient(b, lambda r: (r - 3.0) ** 2 + 1.0)
    assert rho == pytest.approx(3.0, abs=1e-3) and coef == pytest.approx(0.1 * rho)
    assert line_search(lambda r: r + 1.0) == 0.0  # no ρ beats adding nothing
    assert step_coefficient(b.model_copy(update={"line_search": False}), lambda r: pytest.fail("evaluated")) == (1.0, 0.1)
    assert worst_group([0.3, 0.7, 0.7, 0.1]) == 1
    h = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(residuals_from_log_odds(h), 1 - 1 / (1 + np.exp(-h)))


def test_federated_worker_follows_the_shared_rules(tmp_path, shared_data):
    """The client worker's combination weights satisfy the optimality conditions of the shared
    objective (gradients by autograd, independently of the solver's own), with ``ensemble.shrink``
    pulling towards the member it is told is the group's own; its line search returns the ρ of the
    shared rule on the same sampled targets (checked against a grid)."""
    from elora_ray.config import load_config
    from elora_ray.federated.windows import prepare_windows
    from elora_ray.federated.worker import ClientWorker

    from test_federated import TINY

    p = tmp_path / "fed.yaml"
    p.write_text(TINY)  # the federated tests' tiny Llama setting, on 3 clients with more validation windows
    cfg = load_config(p, ["federated.max_clients=3", "federated.min_clients=3", "federated.weight_positions=48",
                          "federated.max_windows.validation=4"])
    cfg.data_root = str(shared_data)
    fed = tmp_path / "fed"
    meta = prepare_windows(cfg, fed)
    clients = meta["clients"]
    worker = ClientWorker(cfg.model_dump(mode="json"), str(fed / "windows.parquet"))
    theta = worker.info()["theta_star"]
    rng = np.random.default_rng(0)
    states = [{k: v + rng.normal(0, 0.3, v.shape).astype(v.dtype) for k, v in theta.items()} for _ in range(2)]
    members = [[(1.0, states[0])], [(1.0, states[1])], [(1.0, theta)]]

    res = worker.fit_weights(clients, members, own=0)
    alpha = np.array(res["alpha"])
    x, y, _, _ = worker._gather(clients, "validation", skip_missing=True)
    z, yt, _ = worker._member_logits_sample(x, y, members)
    assert res["targets"] == len(yt) == 48  # a sample of the validation targets
    a = torch.tensor(alpha, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(torch.einsum("m,nmv->nv", a, z.double()), yt)
    loss.backward()
    g = a.grad.numpy()
    support = alpha > 1e-6
    # KKT on the simplex: equal gradients on the support, no smaller gradient off it
    assert np.ptp(g[support]) < 1e-3 * max(1.0, np.abs(g).max())
    assert (g[~support] >= g[support].min() - 1e-3).all()
    assert res["val_loss"] == pytest.approx(float(loss.detach()), rel=1e-4)
    assert res["val_loss"] <= min(res["member_val_loss"]) + 1e-6

    # shrink pulls the weights to the named own member
    worker.cfg.ensemble.shrink = 100.0
    pulled = np.array(worker.fit_weights(clients, members, own=2)["alpha"])
    assert pulled[2] > 0.95

    # line search: base = member 0, delta = member 1 − θ*
    delta = [(1.0, states[1]), (-1.0, theta)]
    ls = worker.line_search(clients, members[0], delta)
    xf, yf, _, _ = worker._gather(clients, "train", features=True)
    zf, ytf, _ = worker._member_logits_sample(xf, yf, [members[0], delta])

    def at(r):
        return float(torch.nn.functional.cross_entropy(zf[:, 0].float() + r * zf[:, 1].float(), ytf))

    grid = np.linspace(0, 5, 501)
    assert at(ls["rho"]) <= min(at(r) for r in grid) + 1e-5
    assert ls["coef"] == pytest.approx(cfg.boost.step_size * ls["rho"])
    assert ls["loss_before"] == pytest.approx(at(0.0)) and ls["loss_after"] == pytest.approx(at(ls["coef"]))
