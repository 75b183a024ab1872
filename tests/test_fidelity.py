"""`elora fidelity` on a tiny model: artifacts, and the first-order check behaves as theory says."""

from __future__ import annotations

import json

import numpy as np

from elora_ray.cli import main

BASE = ["--set", "model.name_or_path=tiny-bert", "--set", "suite.samples_per_task=40", "--set", "suite.tasks_per_group=[2,1]",
        "--set", "featurize.dim=32", "--set", "fidelity.num_subsets=2", "--set", "fidelity.subset_size=2",
        "--set", "fidelity.batch_size=8"]


def test_fidelity_small_steps_are_first_order_exact(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fidelity", "--out", str(out), *BASE, "--set", "fidelity.lr=1e-5"]) == 0
    s = json.loads((out / "fidelity" / "summary.json").read_text())
    # A tiny step stays in the linear regime: nearly all of the change in h is first order.
    assert s["first_order"]["unexplained_change"] < 0.05, s["first_order"]
    assert s["subsets"] == 2 and s["cost"]["finetune_flops"] > 0 and s["cost"]["featurize_flops"] > 0
    assert set(s["by_l2"]) >= {"0.001", "0.01"}
    assert (out / "plots" / "fidelity.png").stat().st_size > 0
    assert "Estimation fidelity" in capsys.readouterr().out

    # Large steps leave the linear regime: the unexplained share grows.
    big = tmp_path / "big"
    assert main(["fidelity", "--out", str(big), *BASE, "--set", "fidelity.lr=3e-2", "--set", "fidelity.epochs=3"]) == 0
    s_big = json.loads((big / "fidelity" / "summary.json").read_text())
    assert s_big["fine_tuning"]["mean_relative_distance"] > s["fine_tuning"]["mean_relative_distance"]
    assert s_big["first_order"]["unexplained_change"] > s["first_order"]["unexplained_change"]

    # Finished subsets are reused on a rerun.
    mtime = (out / "fidelity" / "real" / "subset-0000.json").stat().st_mtime_ns
    assert main(["fidelity", "--out", str(out), *BASE, "--set", "fidelity.lr=1e-5", "--set", "estimate.l2=0.01",
                 "--set", "fidelity.repeats=2"]) == 0
    assert (out / "fidelity" / "real" / "subset-0000.json").stat().st_mtime_ns == mtime
    # Repeats: each subset fine-tuned again with another seed gives the noise ceiling.
    first = json.loads((out / "fidelity" / "real" / "subset-0000.json").read_text())
    again = json.loads((out / "fidelity" / "real" / "subset-0000-repeat1.json").read_text())
    assert again["seed"] != first["seed"] and again["members"] == first["members"]
    s2 = json.loads((out / "fidelity" / "summary.json").read_text())
    nc = s2["noise_ceiling"]
    expected = np.mean([abs(a["true_loss"] - b["true_loss"]) / a["true_loss"] for k in range(2)
                        for a, b in zip(json.loads((out / "fidelity" / "real" / f"subset-000{k}.json").read_text())["rows"],
                                        json.loads((out / "fidelity" / "real" / f"subset-000{k}-repeat1.json").read_text())["rows"])])
    assert nc["pairs"] == 4 and abs(nc["relative_difference"] - expected) < 1e-12
    expected_acc = np.mean([abs(a["true_accuracy"] - b["true_accuracy"]) / a["true_accuracy"] for k in range(2)
                            for a, b in zip(json.loads((out / "fidelity" / "real" / f"subset-000{k}.json").read_text())["rows"],
                                            json.loads((out / "fidelity" / "real" / f"subset-000{k}-repeat1.json").read_text())["rows"])])
    assert abs(nc["accuracy_relative_difference"] - expected_acc) < 1e-12
    # Every λ of the sweep reports its accuracy error too; the headline's is the summary's.
    assert all("accuracy_relative_error" in a for a in s2["by_l2"].values())
    assert abs(s2["by_l2"]["0.01"]["accuracy_relative_error"] - s2["accuracy_relative_error"]) < 1e-12
    # The headline accuracy is the expected accuracy under the default margin noise; σ = 0 is the share
    # of ĥ > 0. Against the repeat and the mean of both runs, recomputed from the saved fine-tunes.
    import pandas as pd

    from elora_ray.estimate.calibration import DEFAULT_MARGIN_NOISE
    assert s2["margin_noise"] == {"value": DEFAULT_MARGIN_NOISE["full_rank"], "source": "default"}
    sweep = s2["by_l2"]["0.01"]["accuracy_relative_error_by_margin_noise"]
    assert sweep[f"{DEFAULT_MARGIN_NOISE['full_rank']:g}"] == s2["accuracy_relative_error"]
    assert sweep["0"] == s2["accuracy_relative_error_hard"]
    table = pd.read_parquet(out / "fidelity" / "results.parquet")
    reps = {(k, r["task"]): r["true_accuracy"] for k in range(2)
            for r in json.loads((out / "fidelity" / "real" / f"subset-000{k}-repeat1.json").read_text())["rows"]}
    rep_acc = np.array([reps[(k, t)] for k, t in zip(table["subset_id"], table["task"])])
    mean_acc = (rep_acc + table["true_accuracy"].to_numpy()) / 2
    est_acc = table["est_accuracy"].to_numpy()
    assert abs(nc["accuracy_relative_error_vs_repeat"] - np.mean(np.abs(est_acc - rep_acc) / rep_acc)) < 1e-12
    assert abs(nc["accuracy_relative_error_vs_mean"] - np.mean(np.abs(est_acc - mean_acc) / mean_acc)) < 1e-12
    assert "against the mean of both runs" in (out / "fidelity" / "summary.md").read_text()
    assert s["noise_ceiling"] is None and "no change" in (out / "fidelity" / "summary.md").read_text()


def test_calibrate_picks_the_constant_that_predicts_fine_tuning_and_estimate_uses_it(tmp_path, capsys):
    import numpy as np
    from scipy.special import log_expit

    from elora_ray.config import load_config
    from scipy.stats import norm

    from elora_ray.estimate.calibration import (CALIBRATION_GRID, MARGIN_NOISE_GRID, calibration_constant, margin_noise,
                                                regularisation)
    from elora_ray.estimate.stage import load_estimation_features
    from elora_ray.estimate.surrogate import fit_surrogate

    out = tmp_path / "run"
    sets = [*BASE, "--set", "train.epochs=1", "--set", "train.batch_size=8"]
    assert main(["calibrate", "--out", str(out), *sets, "--subsets", "2"]) == 0
    data = json.loads((out / "calibration.json").read_text())
    assert data["constant"] in CALIBRATION_GRID and "calibration constant c" in capsys.readouterr().out
    # Independent check: recompute every grid constant's relative error from the saved real fine-tunes.
    names, feats = load_estimation_features(out)
    real = [json.loads(p.read_text()) for p in sorted((out / "calibrate" / "real").glob("subset-*.json"))]
    assert len(real) == 2 and all(r["steps"] > 0 for r in real)

    def rel_errors(c: float) -> tuple[float, dict[float, float]]:
        """(loss relative error, accuracy relative error per σ) of constant c over the saved fine-tunes."""
        errs, acc_errs = [], {sg: [] for sg in MARGIN_NOISE_GRID}
        for r in real:
            g = np.concatenate([feats[m][0] for m in r["members"]])
            h = np.concatenate([feats[m][1] for m in r["members"]])
            w = fit_surrogate(g, h, l2=regularisation(c, len(h), 1e-3, 1.0, 8)).w
            for row in r["rows"]:
                margin = feats[row["task"]][3].astype(float) + feats[row["task"]][2].astype(float) @ w
                est = float(-log_expit(margin).mean())
                errs.append(abs(est - row["true_loss"]) / row["true_loss"])
                for sg in MARGIN_NOISE_GRID:
                    acc = float((margin > 0).mean()) if sg == 0 else float(norm.cdf(margin / sg).mean())
                    acc_errs[sg].append(abs(acc - row["true_accuracy"]) / row["true_accuracy"])
        return float(np.mean(errs)), {sg: float(np.mean(v)) for sg, v in acc_errs.items()}

    errors = {c: rel_errors(c) for c in CALIBRATION_GRID}
    assert data["constant"] == min(errors, key=lambda c: errors[c][0])
    assert abs(data["loss_relative_error"] - errors[data["constant"]][0]) < 1e-9
    # At that c, σ is the grid value with the smallest accuracy error (ties: the smaller σ).
    by_sigma = errors[data["constant"]][1]
    best = min(by_sigma.values())
    assert data["margin_noise"] == min(sg for sg, e in by_sigma.items() if e - best < 1e-12)
    assert abs(data["accuracy_relative_error"] - best) < 1e-9
    # A later run of the same model + adapter finds it (run directory first, then the user cache).
    cfg = load_config(None, [s for s in sets if s != "--set"])
    assert calibration_constant(cfg, out) == (data["constant"], str(out / "calibration.json"))
    assert calibration_constant(cfg, tmp_path / "elsewhere")[0] == data["constant"]
    assert margin_noise(cfg, out) == (data["margin_noise"], str(out / "calibration.json"))
    assert main(["estimate", "--out", str(out), *sets]) == 0
    summary = json.loads((out / "estimate" / "summary.json").read_text())
    assert f"c from {out / 'calibration.json'}" in summary["l2"]
