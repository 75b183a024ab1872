"""The featurize stage on Ray Data: schema, alignment by sample id, resume, determinism."""

from __future__ import annotations

import json

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from elora_ray.artifacts import read_prepared
from elora_ray.config import load_config
from elora_ray.featurize import featurize, read_features
from elora_ray.featurize.gradients import PerSampleGradients, gold_log_odds
from elora_ray.featurize.model_at_init import build_model_at_init
from elora_ray.featurize.projection import JLProjector
from elora_ray.featurize.worker import gradient_layers_for, projection_seed
from elora_ray.models.classifier import TaskSpec
from elora_ray.prepare import prepare

SETS = ["model.name_or_path=tiny-bert", "suite.samples_per_task=40", "suite.tasks_per_group=[2,1]",
        "featurize.dim=24", "featurize.shard_size=8", "featurize.batch_size=5", "featurize.gradient=adapter"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("feat")
    cfg = load_config(None, SETS)
    prepare(cfg, out)
    manifest = featurize(cfg, out, progress=False)
    return cfg, out, manifest


def test_shards_schema_and_counts(run):
    cfg, out, manifest = run
    tasks = read_prepared(out)
    for t in tasks:
        for split in ("train", "validation"):
            assert manifest["splits"][split][t.name] == len(t.splits[split])
    f = sorted((out / "features" / "train").rglob("part-*.parquet"))[0]
    table = pq.read_table(f)
    assert table.column_names == ["task", "split", "sample_id", "label", "label_id", "tokens", "flops", "h0", "grad", "node"]
    assert sum(manifest["samples_per_node"].values()) == manifest["samples"]
    assert table.schema.field("grad").type.list_size == 24
    assert manifest["flops"] > 0 and manifest["gradient_parameters"] > 0
    assert (out / "features" / "heads.safetensors").is_file()  # encoder: probed heads


def test_features_align_with_a_direct_computation_by_sample_id(run):
    cfg, out, _ = run
    tasks = read_prepared(out)
    specs = [TaskSpec.of(t) for t in tasks]
    peft_model, model = build_model_at_init(cfg, specs, out / "features" / "heads.safetensors")
    layers = gradient_layers_for(peft_model)
    proj = JLProjector(sum(g.size for g in layers), 24, projection_seed(cfg), block_rows=cfg.featurize.block_rows)
    feats = read_features(out, "validation")
    t = tasks[-1]
    ex = t.splits["validation"][3]
    enc = model.tokenize([t.name], [ex.text], [ex.text_pair])
    with PerSampleGradients(layers) as psg:
        h = gold_log_odds(peft_model(**enc), torch.tensor([t.label_id(ex.label)]))
        g = proj.project(psg.backward(h))
    row = list(feats[t.name].sample_ids).index(ex.sample_id)
    np.testing.assert_allclose(feats[t.name].grad[row], g[0].numpy(), rtol=1e-4, atol=1e-6)
    assert feats[t.name].h0[row] == pytest.approx(float(h[0].detach()), rel=1e-5, abs=1e-6)


def test_resume_recomputes_only_missing_shards_identically(run, caplog):
    cfg, out, _ = run
    shards = sorted((out / "features").rglob("part-*.parquet"))
    victim = shards[len(shards) // 2]
    before = pq.read_table(victim)
    other = shards[0]
    other_mtime = other.stat().st_mtime_ns
    victim.unlink()
    (out / "features" / "manifest.json").unlink()  # as if killed before the end
    caplog.set_level("INFO")
    manifest = featurize(cfg, out, progress=False)
    assert "resuming" in caplog.text and manifest["shards_resumed"] == len(shards) - 1
    assert other.stat().st_mtime_ns == other_mtime
    after = pq.read_table(victim)
    assert after.column("sample_id").to_pylist() == before.column("sample_id").to_pylist()
    np.testing.assert_allclose(
        np.stack(after.column("grad").to_numpy(zero_copy_only=False)),
        np.stack(before.column("grad").to_numpy(zero_copy_only=False)), rtol=1e-5, atol=1e-7,
    )


def test_a_resume_with_every_shard_written_keeps_the_gradient_parameter_count(run):
    """Killed after the last shard but before the manifest: nothing is recomputed, and the manifest still
    says how many parameters were differentiated (the linearised boosting learners need it)."""
    cfg, out, _ = run
    before = json.loads((out / "features" / "manifest.json").read_text())["gradient_parameters"]
    (out / "features" / "manifest.json").unlink()
    manifest = featurize(cfg, out, progress=False)
    assert manifest["shards_resumed"] == manifest["shards"]
    assert before and manifest["gradient_parameters"] == before


def test_current_features_are_skipped_and_a_changed_projection_recomputes(run, caplog):
    cfg, out, _ = run
    caplog.set_level("INFO")
    featurize(cfg, out, progress=False)
    assert "skipping" in caplog.text
    changed = load_config(None, [*SETS, "featurize.dim=12"])
    manifest = featurize(changed, out, progress=False)
    assert manifest["dim"] == 12 and manifest["shards_resumed"] == 0
    assert read_features(out, "train")[read_prepared(out)[0].name].grad.shape[1] == 12


def test_nan_features_are_refused_by_name_and_a_prior_estimate_survives(run, tmp_path):
    import hashlib
    import shutil

    import pyarrow as pa

    from elora_ray.errors import DataError
    from elora_ray.estimate import estimate
    from elora_ray.featurize.stage import _check_finite
    from elora_ray.layout import FEATURE_DIR

    cfg, out, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    small = load_config(None, SETS + ["estimate.num_subsets=6"])
    estimate(small, copy, progress=False)
    est_files = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (copy / "estimate").rglob("*") if p.is_file()}

    shard = sorted((copy / FEATURE_DIR / "train").rglob("part-*.parquet"))[-1]
    table = pq.read_table(shard)
    d = len(table["grad"][0])
    grad = table["grad"].combine_chunks().flatten().to_numpy().reshape(-1, d).copy()
    grad[1, 3] = np.nan
    table = table.set_column(table.schema.get_field_index("grad"), "grad",
                             pa.FixedSizeListArray.from_arrays(pa.array(grad.ravel()), d))
    pq.write_table(table, shard)
    bad_id = table["sample_id"][1].as_py()
    with pytest.raises(DataError, match="NaN/inf") as info:
        estimate(load_config(None, SETS + ["estimate.num_subsets=7"]), copy, progress=False)
    msg = str(info.value)
    assert str(shard) in msg and bad_id in msg and "field 'grad/h0'" in msg
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (copy / "estimate").rglob("*") if p.is_file()} == est_files

    # The featurize stage refuses to write such a shard in the first place.
    parts = [{"grad": grad[:3], "h0": np.array([0.1, np.inf, 0.2], dtype=np.float32), "sample_id": np.array(["s0", "s1", "s2"])}]
    with pytest.raises(DataError, match=r"1 sample\(s\) gave NaN/inf gradients.*\['s1'\]"):
        _check_finite(parts, tmp_path / "never.parquet")
    assert not (tmp_path / "never.parquet").exists()


def test_estimate_stage_affinity_equals_the_cosine_of_mean_loss_gradients(run, tmp_path):
    """The estimate stage's affinity.csv (default first_order) against a direct computation from the
    feature shards: Ã_ij = cos(G_i, G_j), G_t = mean over t's training samples of -σ(-h0)·g."""
    import numpy as np
    import pandas as pd

    from elora_ray.estimate import estimate

    cfg, out, _ = run
    copy = tmp_path / "est"
    shutil.copytree(out, copy)
    summary = estimate(cfg, copy, progress=False)
    assert summary["affinity"] == "first_order"
    got = pd.read_csv(copy / "affinity.csv", index_col=0)
    table = pq.read_table(copy / "features" / "train").to_pandas()
    G = {}
    for task, rows in table.groupby("task"):
        g = np.stack(rows["grad"].to_numpy()).astype(np.float64)
        w = 1.0 / (1.0 + np.exp(rows["h0"].to_numpy(np.float64)))  # σ(-h0)
        G[task] = -(w[:, None] * g).mean(0)
    names = list(got.columns)
    assert sorted(names) == sorted(G)
    M = np.stack([G[t] for t in names])
    cos = (M @ M.T) / np.outer(np.linalg.norm(M, axis=1), np.linalg.norm(M, axis=1))
    np.testing.assert_allclose(got.to_numpy(), cos, rtol=1e-4, atol=1e-5)
    # and the two half-sample estimates are written for m selection, from disjoint halves of the samples
    half_a = pd.read_csv(copy / "affinity_half_a.csv", index_col=0).to_numpy()
    assert half_a.shape == cos.shape and not np.allclose(half_a, cos)


def test_full_rank_features_align_with_a_direct_sketch(run, tmp_path):
    from elora_ray.featurize.update_sketch import PerSampleUpdateSketch, lora_sites

    cfg, out, _ = run
    other = tmp_path / "full_rank"
    shutil.copytree(out / "data", other / "data")
    full = load_config(None, [*SETS[:-1], "featurize.gradient=auto"])  # auto: full_rank for LoRA
    assert full.feature_gradient() == "full_rank"
    manifest = featurize(full, other, progress=False)
    assert manifest["gradient_parameters"] > 0 and manifest["gradient"] == "full_rank"
    tasks = read_prepared(other)
    specs = [TaskSpec.of(t) for t in tasks]
    peft_model, model = build_model_at_init(full, specs, other / "features" / "heads.safetensors")
    gradient_layers_for(peft_model)
    sites = lora_sites(peft_model)
    assert manifest["gradient_parameters"] == sum(s.size for s in sites)
    t = tasks[0]
    ex = t.splits["train"][2]
    enc = model.tokenize([t.name], [ex.text], [ex.text_pair])
    with PerSampleUpdateSketch(sites, 24, projection_seed(full)) as sk:
        g = sk.backward(gold_log_odds(peft_model(**enc), torch.tensor([t.label_id(ex.label)])))
    feats = read_features(other, "train")
    row = list(feats[t.name].sample_ids).index(ex.sample_id)
    np.testing.assert_allclose(feats[t.name].grad[row], g[0].detach().numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gradient", ["full_rank", "adapter"])
def test_featurize_out_of_memory_backs_off_to_smaller_slices_with_the_same_features(gradient, caplog):
    """An injected out-of-memory error for forwards of more than 2 samples: the actor halves its slice
    (4 -> 2), the features equal those of whole batches, the size is kept for later batches and reported."""
    import numpy as np
    import torch

    from elora_ray.config import load_config
    from elora_ray.featurize.worker import SampleFeaturizer

    cfg = load_config(None, ["model.name_or_path=tiny-llama", "featurize.dim=32", f"featurize.gradient={gradient}"])
    specs = [{"name": "sent", "labels": ["negative", "positive"]}, {"name": "nli", "labels": ["yes", "no"]}]
    batch = {"task": np.array(["sent", "nli", "sent", "nli"], dtype=object),
             "text": np.array(["a fine film", "it rains", "awful plot and worse acting", "the cat sat"], dtype=object),
             "split": np.array(["train"] * 4, dtype=object), "sample_id": np.array(["0", "1", "2", "3"], dtype=object),
             "label": np.array(["positive", "no", "negative", "yes"], dtype=object),
             "label_id": np.array([1, 1, 0, 0]), "shard": np.array([0] * 4)}
    ref = SampleFeaturizer(cfg.model_dump(mode="json"), specs, None, "gradients")(dict(batch))
    feat = SampleFeaturizer(cfg.model_dump(mode="json"), specs, None, "gradients")
    real = feat._gradients

    def limited(enc, labels):
        if labels.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(enc, labels)

    feat._gradients = limited
    out = feat(dict(batch))
    np.testing.assert_allclose(out["grad"], ref["grad"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["h0"], ref["h0"], rtol=1e-5, atol=1e-6)
    assert feat.micro_batch == 2 and set(out["micro_batch"]) == {2} and set(ref["micro_batch"]) == {4}
    assert "out of memory at 4 samples" in caplog.text
    feat(dict(batch))  # later batches start at the size that fit
    assert feat.micro_batch == 2
