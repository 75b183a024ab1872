"""Algorithm 1 end to end on the embedded default (MiniLM): the planted groups come back."""

from __future__ import annotations

import json

import pytest

from elora_ray.cli import main


@pytest.mark.slow
def test_embedded_suite_planted_groups_are_recovered(tmp_path):
    out = tmp_path / "run"
    assert main(["cluster", "--out", str(out)]) == 0
    groups = json.loads((out / "groups.json").read_text())
    assert groups["planted_ari"] >= 0.8, groups
    assert groups["method"] == "sdp"
    # a probed encoder: its halves are coupled, so m comes from the eigengap, whose values are reported
    assert groups["select_m"] == "eigengap"
    assert groups["local_scaling"] == 2  # the default neighbour rank of the self-tuning kernel
    chosen = [c for c in groups["candidates"] if c["selected"]]
    assert [c["m"] for c in chosen] == [groups["m"]]
    assert chosen[0]["gap_ratio"] == max(c["gap_ratio"] for c in groups["candidates"])
    summary = json.loads((out / "estimate" / "summary.json").read_text())
    assert summary["coverage"] == 1.0 and summary["affinity"] == "first_order"
    assert (out / "plots" / "affinity.png").stat().st_size > 10_000
