"""`elora fidelity` on a tiny model: artifacts, and the first-order check behaves as theory says."""

from __future__ import annotations

import json

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
    assert main(["fidelity", "--out", str(out), *BASE, "--set", "fidelity.lr=1e-5", "--set", "estimate.l2=0.01"]) == 0
    assert (out / "fidelity" / "real" / "subset-0000.json").stat().st_mtime_ns == mtime
