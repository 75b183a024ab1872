"""Kill the pipeline mid-featurisation (SIGKILL, the driver and its Ray processes); the rerun
finishes without redoing the shards that were written, and the features equal an uninterrupted
run's."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from elora_ray.config import load_config
from elora_ray.featurize import featurize
from elora_ray.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["model.name_or_path=tiny-bert", "suite.samples_per_task=200", "featurize.dim=16",
            "featurize.shard_size=20", "featurize.batch_size=4", "featurize.actors=1", "ray.num_cpus=1"]


def _kill_tree(proc: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL the driver's process group and every process of that driver's Ray: its temp dir in the
    command line (raylet, GCS) or in the environment (workers, whose command line Ray renames to
    ``ray::<task>``; a worker busy training would otherwise go on until it notices the raylet gone)."""
    import psutil

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(ray_tmp in part for part in (p.info["cmdline"] or [])) or p.environ().get("RAY_TMPDIR") == ray_tmp:
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    proc.wait(timeout=60)


@contextmanager
def kill_once(process_marker: str, when):
    """While the body runs, SIGKILL the first process whose command line contains
    ``process_marker`` as soon as ``when()`` is true; yields the list of killed pids."""
    import threading

    import psutil

    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set() and not killed:
            if when():
                for p in psutil.process_iter(["cmdline"]):
                    try:
                        if any(process_marker in part for part in (p.info["cmdline"] or [])):
                            p.kill()
                            killed.append(p.pid)
                            break
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        yield killed
    finally:
        stop.set()
        t.join()


def _shards(run: Path) -> dict[str, Path]:
    """Published shards, <split>/<task>/part-*.parquet: not a copy staged in a hidden temporary folder beside
    them, which a process killed while writing leaves behind."""
    return {str(p.relative_to(run)): p for p in sorted((run / "features").glob("*/*/part-*.parquet"))}


def _features(run: Path) -> dict[str, tuple[float, np.ndarray]]:
    out = {}
    for p in _shards(run).values():
        t = pq.read_table(p, columns=["sample_id", "h0", "grad"]).to_pydict()
        for s, h, g in zip(t["sample_id"], t["h0"], t["grad"]):
            out[s] = (h, np.asarray(g))
    return out


@pytest.fixture(scope="module")
def reference_features(tmp_path_factory):
    cfg = load_config(None, SETTINGS)
    ref = tmp_path_factory.mktemp("reference")
    prepare(cfg, ref)
    featurize(cfg, ref, progress=False)
    return _features(ref)


def _assert_same_features(got: dict, reference: dict) -> None:
    assert set(got) == set(reference)
    for s, (h, g) in reference.items():
        assert got[s][0] == pytest.approx(h, rel=1e-4, abs=1e-5)
        np.testing.assert_allclose(got[s][1], g, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_featurize_actor_killed_midway_is_restarted_by_ray_data(tmp_path, reference_features):
    """Ray Data restarts a dead map actor and retries its batches; the features come out complete."""
    cfg = load_config(None, SETTINGS)
    run = tmp_path / "run"
    prepare(cfg, run)
    # mid-stream: some shards written, most to come
    with kill_once("SampleFeaturizer", lambda: len(_shards(run)) >= 2) as killed:
        manifest = featurize(cfg, run, progress=False)
    assert killed, "no featurisation actor was found to kill"
    assert manifest["shards_resumed"] == 0  # one run: the retry happened inside Ray Data
    _assert_same_features(_features(run), reference_features)


@pytest.mark.slow
def test_featurize_killed_midway_resumes_without_redoing_shards(tmp_path, reference_features):
    cfg = load_config(None, SETTINGS)
    reference = reference_features

    run = tmp_path / "killed"
    ray_tmp = f"/tmp/elora-kill-{secrets.token_hex(4)}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_tmp}
    args = [a for s in SETTINGS for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "elora_ray.cli", "featurize", "--out", str(run), *args],
                            cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while len(_shards(run)) < 3:
            assert proc.poll() is None, "featurize finished or failed before it could be killed"
            assert time.time() < deadline, "no shards written within 10 minutes"
            time.sleep(0.2)
    finally:
        _kill_tree(proc, ray_tmp)
    before = {k: p.stat().st_mtime_ns for k, p in _shards(run).items()}
    assert 3 <= len(before) and not (run / "features" / "manifest.json").exists()

    manifest = featurize(cfg, run, progress=False)  # the rerun
    assert manifest["shards_resumed"] == len(before)
    assert not list((run / "features").rglob(".part-*.tmp"))  # staged copies of the killed run are cleaned up
    after = _shards(run)
    assert len(after) == manifest["shards"] > len(before)
    assert all(after[k].stat().st_mtime_ns == t for k, t in before.items())  # finished shards untouched
    _assert_same_features(_features(run), reference)


TRAIN = ["model.name_or_path=tiny-bert", "suite.samples_per_task=60", "suite.tasks_per_group=[1,1,1]", "featurize.dim=16",
         "estimate.num_subsets=20", "cluster.num_groups=3", "train.epochs=6", "train.evals_per_epoch=4", "train.patience=0",
         "train.batch_size=4", "train.validate_at_start=false", "ray.num_cpus=1"]
"""Three one-task groups (one adapter each, trained one after another on one CPU), each long enough
(6 epochs, 4 validations per epoch) to be killed between checkpoints. A checkpoint is written when
validation improves; without a check at the start, the first validation (step ~3) always does, so
every adapter has an early checkpoint to be killed after, whatever order the jobs run in."""


def _checkpoint_step(state_json: Path) -> int:
    """The training step of a checkpoint (0 while it is still being written)."""
    import json

    try:
        return int(json.loads(state_json.read_text())["loop"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _adapter(run: Path, job: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run / "adapters" / job / "adapter_model.safetensors"))


@pytest.mark.slow
def test_training_killed_midway_resumes_from_checkpoints_with_identical_adapters(tmp_path, caplog):
    import json
    import logging

    from elora_ray.pipeline import run_stages

    cfg = load_config(None, TRAIN)
    ref = tmp_path / "reference"
    run_stages(cfg, ref, until="cluster")
    run = tmp_path / "killed"
    shutil.copytree(ref, run)  # the same data, features and groups; only training differs
    run_stages(cfg, ref, until="train")
    groups = json.loads((ref / "groups.json").read_text())["groups"]
    jobs = [f"group-{i}" for i in range(len(groups))]
    ray_tmp = f"/tmp/elora-kill-{secrets.token_hex(4)}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_tmp}
    args = [a for s in TRAIN for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "elora_ray.cli", "train", "--out", str(run), *args],
                            cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = run / "train" / "jobs"
    try:
        deadline = time.time() + 600
        # kill once one adapter is finished and another has written a checkpoint early in its training:
        # past step 0 (validate_at_start checkpoints the starting point too; resuming from it is a
        # restart) and well before its last step (~66), so that it cannot finish while the processes
        # are being killed (a loaded machine makes that take seconds)
        while True:
            done = sorted(p.stem for p in records.glob("group-*.json")) if records.is_dir() else []
            ckpts = [p for p in (run / "ray_train").glob("group-*/**/checkpoint_0*/state.json")
                     if 0 < _checkpoint_step(p) <= 30] if (run / "ray_train").is_dir() else []
            started = {p.relative_to(run / "ray_train").parts[0].rsplit("-", 1)[0] for p in ckpts}
            if done and started - set(done):
                break
            assert proc.poll() is None, "training finished or failed before it could be killed"
            assert time.time() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.1)
    finally:
        _kill_tree(proc, ray_tmp)
    finished = {j: (records / f"{j}.json").stat().st_mtime_ns for j in jobs if (records / f"{j}.json").is_file()}
    assert finished and len(finished) < len(jobs)
    last_checkpoint = {j: max([_checkpoint_step(p) for p in (run / "ray_train").glob(f"{j}-*/**/checkpoint_0*/state.json")],
                              default=0) for j in jobs if j not in finished}

    with caplog.at_level(logging.INFO, logger="elora_ray"):
        run_stages(cfg, run, until="train")  # the rerun
    for j, t in finished.items():
        assert (records / f"{j}.json").stat().st_mtime_ns == t  # not retrained
    resumed = [j for j in jobs if j not in finished and last_checkpoint[j] > 0
               and json.loads((records / f"{j}.json").read_text())["metrics"]["resumed_from_step"] == last_checkpoint[j]]
    assert resumed, f"the interrupted adapter did not resume from its last checkpoint {last_checkpoint}"
    for j in resumed:  # the log says so: its step count is this run's, not the adapter's total
        assert f"{j} trained on" in caplog.text and f"after resuming at step {last_checkpoint[j]}," in caplog.text
    for j in jobs:
        a, b = _adapter(ref, j), _adapter(run, j)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=f"{j}:{k}")


@pytest.mark.slow
def test_ray_train_restarts_a_killed_worker_from_its_last_checkpoint(tmp_path):
    """train.num_workers=1 (a real Ray Train worker group, FailureConfig(max_failures=1)): the
    worker process is killed after its first checkpoint; Ray Train restarts it, the training
    function resumes from ``ray.train.get_checkpoint()`` and the adapter equals an unkilled run's."""
    import json

    from elora_ray.pipeline import run_stages

    settings = [*TRAIN, "cluster.num_groups=1", "train.epochs=2"]  # 8 checkpoints
    cfg = load_config(None, settings + ["train.num_workers=1"])
    ref = tmp_path / "reference"
    run_stages(cfg, ref, until="cluster")
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    # The unkilled reference trains in local mode (num_workers=0, 4x faster here): DDP on one worker
    # follows the same batches and updates, so the adapters must agree (same job fingerprint).
    run_stages(load_config(None, settings + ["train.num_workers=0"]), ref, until="train")
    root = run / "ray_train"

    def registered() -> bool:  # a checkpoint the controller has registered (not one still being staged)
        return root.is_dir() and any(root.rglob("checkpoint_manager_snapshot.json")) and any(root.rglob("checkpoint_*/state.json"))

    with kill_once("RayTrainWorker", registered) as killed:
        run_stages(cfg, run, until="train")
    assert killed, "no Ray Train worker was found to kill"
    rec = json.loads((run / "train" / "jobs" / "group-0.json").read_text())
    assert rec["metrics"]["resumed_from_step"] > 0
    a, b = _adapter(ref, "group-0"), _adapter(run, "group-0")
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
