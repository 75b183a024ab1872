"""Federated mode: the client rule, FedAvg, the client pool's retries, and a 500-client run."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from elora_ray.config import FederatedConfig, load_config
from elora_ray.errors import DataError
from elora_ray.federated.clients import client_windows, make_clients, parse_speeches, windows_table
from elora_ray.federated.model import fedavg

PLAY = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?
Is't a verdict?

All:
Resolved. resolved.
"""


def test_speeches_and_client_rule():
    sp = parse_speeches(PLAY)
    assert [r for r, _ in sp] == ["First Citizen", "All", "First Citizen", "All"]
    assert sp[2][1] == "You are all resolved rather to die than to famish?\nIs't a verdict?"
    # a 60-character budget puts each First Citizen speech in its own client; All's two fit in one
    clients = make_clients(sp, client_chars=60, min_client_chars=1)
    assert [c.name for c in clients] == ["First Citizen#0", "First Citizen#1", "All#0"]
    assert clients[2].text == "Speak, speak.\nResolved. resolved."
    # clients shorter than min_client_chars are dropped
    assert [c.name for c in make_clients(sp, 60, 40)] == ["First Citizen#0", "First Citizen#1"]


def test_text_before_first_speaker_names_the_line():
    with pytest.raises(DataError, match=r"play.txt:1: text before the first"):
        parse_speeches("stray prologue\n\nA:\nhi\n", "play.txt")


def test_windows_are_contiguous_per_split_and_capped():
    cfg = FederatedConfig(context_tokens=4, stride=2, max_windows={"train": 100, "validation": 100, "test": 100})
    tokens = list(range(100))
    w = client_windows(tokens, cfg)
    span = cfg.context_tokens + 1
    # every window lies inside its region: train < validation < test, no straddling
    assert max(w["train"]) + span <= min(w["validation"])
    assert max(w["validation"]) + span <= min(w["test"])
    assert min(w["test"]) >= 80 and max(w["test"]) + span <= 100
    capped = client_windows(tokens, cfg.model_copy(update={"max_windows": {"train": 3, "validation": 1, "test": 2}}))
    assert len(capped["train"]) == 3 and capped["train"][0] == 0 and capped["train"][-1] == w["train"][-1]


class _ToyTokenizer:
    def encode(self, text, add_special_tokens=False):
        return [ord(ch) % 97 for ch in text]


def test_window_targets_follow_their_context():
    cfg = FederatedConfig(context_tokens=3, stride=3)
    clients = make_clients(parse_speeches(PLAY), 1000, 1)
    tab, counts = windows_table(clients, _ToyTokenizer(), cfg)
    rows = tab.to_pylist()
    text = {c.name: _ToyTokenizer().encode(c.text) for c in clients}
    for r in rows:
        start = int(r["sample_id"].rsplit("/", 1)[1])
        toks = text[r["client"]]
        assert r["input_ids"] == toks[start : start + 3] and r["target"] == toks[start + 3]
    assert sum(v["train"] for v in counts.values()) == sum(r["split"] == "train" for r in rows)


def test_every_position_loss_equals_the_causal_lms_own_loss():
    """targets: all — a window's loss is the mean next-token loss of [window, token after it], which is
    exactly what the Hugging Face causal LM computes itself from ``labels``; ``last`` keeps only the
    final position. Both checked against that independent reference, and training uses the same loss."""
    import torch

    from elora_ray.federated.model import build_lm, token_losses, train_windows, window_logits, window_targets

    cfg = load_config(None, ["model.name_or_path=tiny-llama", "adapter.rank=2"])
    peft_model, _ = build_lm(cfg)
    rng = np.random.default_rng(0)
    seq = rng.integers(3, 200, size=(5, 9))  # 5 windows of 8 tokens + the token after each
    x, after = seq[:, :-1], seq[:, -1]
    y = window_targets(x, after, all_positions=True)
    np.testing.assert_array_equal(y, seq[:, 1:])
    ours = token_losses(window_logits(peft_model, x), y)
    lm = peft_model.base_model.model.lm
    with torch.no_grad():
        ref = [float(lm(input_ids=torch.as_tensor(s[None]), labels=torch.as_tensor(s[None])).loss) for s in seq]
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    # last position only: the loss of the token after the window
    peft_model.base_model.model.all_positions = False
    last = token_losses(window_logits(peft_model, x), window_targets(x, after, all_positions=False))
    with torch.no_grad():
        logits = lm(input_ids=torch.as_tensor(x)).logits[:, -1]
    np.testing.assert_allclose(last, torch.nn.functional.cross_entropy(logits, torch.as_tensor(after), reduction="none"),
                               rtol=1e-5)
    # training lowers exactly this loss
    peft_model.base_model.model.all_positions = True
    before = token_losses(window_logits(peft_model, x), y).mean()
    train_windows(peft_model, x, y, epochs=20, lr=1e-2, batch_size=5, seed=0)
    assert token_losses(window_logits(peft_model, x), y).mean() < before - 0.1


def test_shakespeare_gives_at_least_500_clients(shared_data: Path):
    text = (shared_data / "shakespeare" / "tinyshakespeare.txt").read_text()
    cfg = FederatedConfig()
    clients = make_clients(parse_speeches(text), cfg.client_chars, cfg.min_client_chars)
    assert len(clients) >= 500
    assert len({c.name for c in clients}) == len(clients)
    assert all(len(c.text) >= cfg.min_client_chars for c in clients)


def test_fedavg_weighted_mean():
    a = {"w": np.array([1.0, 2.0], np.float32)}
    b = {"w": np.array([3.0, 6.0], np.float32)}
    np.testing.assert_allclose(fedavg([a, b], [1, 3])["w"], [2.5, 5.0])
    with pytest.raises(ValueError):
        fedavg([], [])


# ---------------------------------------------------------------- the pool


def _flaky_actor_class():
    # defined in a function so Ray ships it by value (workers cannot import the tests package)
    class Flaky:
        """Toy client actor: ``fail`` keys always raise, ``once`` keys fail on the first call only,
        ``die`` kills the actor process the first time (marker file)."""

        def __init__(self, marker_dir: str) -> None:
            self.marker_dir = Path(marker_dir)
            self.pid = os.getpid()

        def work(self, key: str, x: int) -> dict:
            marker = self.marker_dir / key
            if key.startswith("fail"):
                raise ValueError(f"bad client {key}")
            if key.startswith("once") and not marker.exists():
                marker.touch()
                raise RuntimeError("transient")
            if key.startswith("die") and not marker.exists():
                marker.touch()
                os._exit(1)
            return {"y": x * x, "pid": self.pid}

    return Flaky


def test_pool_serves_more_clients_than_workers_and_survives_failures(tmp_path, caplog):
    from elora_ray.federated.pool import ActorPool
    from elora_ray.raysession import ensure_ray

    ensure_ray()
    pool = ActorPool(_flaky_actor_class(), (str(tmp_path),), workers=2, max_retries=1, num_cpus=0.5)
    try:
        items = [(f"c{i}", (f"c{i}", i)) for i in range(25)]
        items += [("fail-1", ("fail-1", 3)), ("once-1", ("once-1", 4)), ("die-1", ("die-1", 5))]
        with caplog.at_level(logging.WARNING, logger="elora_ray.federated.pool"):
            res = pool.map("work", items)
    finally:
        pool.shutdown()
    assert {k: v["y"] for k, v in res.results.items() if k.startswith("c")} == {f"c{i}": i * i for i in range(25)}
    assert len({v["pid"] for v in res.results.values()}) >= 2  # the work was spread over the pool
    assert res.results["once-1"]["y"] == 16 and res.results["die-1"]["y"] == 25  # retried
    assert list(res.failed) == ["fail-1"] and "bad client fail-1" in res.failed["fail-1"]
    assert pool.replaced >= 1
    assert any("fail-1" in r.message and "excluded" in r.message for r in caplog.records)


# ---------------------------------------------------------------- with the model

TINY = """
model: {name_or_path: tiny-llama}
adapter: {type: lora, rank: 4}
featurize: {dim: 32}
federated:
  context_tokens: 16
  stride: 16
  max_windows: {train: 6, validation: 2, test: 3}
  featurize_windows: 4
  rounds: 2
  client_fraction: 0.05
  num_groups: 4
  num_subsets: 600
  boost_steps: 1
  lr: 0.01
"""


def _cfg(tmp_path: Path, shared_data: Path, extra: str = ""):
    p = tmp_path / "fed.yaml"
    p.write_text(TINY + extra)
    cfg = load_config(p)
    cfg.data_root = str(shared_data)
    return cfg


def test_fedavg_weights_client_updates_by_their_training_windows(tmp_path, shared_data):
    """One round over two clients of different sizes (the same text, one with 2 training windows, one with
    all 6): the new adapter is the window-weighted mean of the two local trainings done independently."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from elora_ray.federated.clients import WINDOW_SCHEMA
    from elora_ray.federated.fedavg import round_seed, run_fedavg
    from elora_ray.federated.pool import ActorPool
    from elora_ray.federated.windows import prepare_windows
    from elora_ray.federated.worker import ClientWorker
    from elora_ray.raysession import ensure_ray

    cfg = _cfg(tmp_path, shared_data, "  max_clients: 3\n  min_clients: 3\n  client_fraction: 1.0\n  rounds: 1\n")
    fed = tmp_path / "fed"
    prepare_windows(cfg, fed)
    table = pq.read_table(fed / "windows.parquet").to_pandas()
    first = table["client"].iloc[0]
    one = table[table["client"] == first]
    assert (one["split"] == "train").sum() == 6
    parts = []
    for name, keep in (("big", 6), ("small", 2)):
        c = one.copy()
        c["client"] = name
        c["sample_id"] = [x.replace(first, name) for x in c["sample_id"]]
        train_rows = c.index[c["split"] == "train"]
        parts.append(c.drop(train_rows[keep:]))
    path = tmp_path / "sized.parquet"
    pq.write_table(pa.Table.from_pandas(pd.concat(parts), schema=WINDOW_SCHEMA, preserve_index=False), path)
    local = ClientWorker(cfg.model_dump(mode="json"), str(path))
    theta = local.info()["theta_star"]
    seed = round_seed(cfg.seed, 0)
    updates = {c: local.update(c, theta, cfg.federated.local_epochs, cfg.federated.lr, seed) for c in ("big", "small")}
    assert (updates["big"]["n"], updates["small"]["n"]) == (6, 2)
    assert any(not np.allclose(updates["big"]["state"][k], updates["small"]["state"][k]) for k in theta)
    expected = {k: (6 * updates["big"]["state"][k] + 2 * updates["small"]["state"][k]) / 8 for k in theta}
    unweighted = {k: (updates["big"]["state"][k] + updates["small"]["state"][k]) / 2 for k in theta}
    ensure_ray()
    pool = ActorPool(ClientWorker, (cfg.model_dump(mode="json"), str(path)), workers=2, num_cpus=0.5)
    try:
        run = run_fedavg(pool, {"all": ["big", "small"]}, theta, cfg.federated, cfg.seed, tmp_path / "ck")
    finally:
        pool.shutdown()
    assert run.client_updates == 2
    for k in theta:
        np.testing.assert_allclose(run.states["all"][k], expected[k], rtol=1e-5, atol=1e-7)
    assert any(not np.allclose(run.states["all"][k], unweighted[k], rtol=1e-5, atol=1e-7) for k in theta)

    # The same round on Ray Train (federated.engine: ray_train): two workers that each train one client
    # and all-reduce their window-weighted sums give the same adapter (local mode, 0 workers, runs in
    # test_clients_from_several_sources_and_groups_scored_against_them).
    from elora_ray.federated.train_fedavg import run_fedavg_ray_train

    (tmp_path / "rt").mkdir()
    (tmp_path / "rt" / "windows.parquet").symlink_to(path)
    for workers in (2,):
        c = cfg.model_copy(deep=True)
        c.federated.engine, c.federated.train_workers = "ray_train", workers
        rt = run_fedavg_ray_train(c, {"all": ["big", "small"]}, theta, tmp_path / "rt", tmp_path / "rt" / f"ck{workers}")
        assert rt.client_updates == 2 and rt.trained_windows == run.trained_windows, workers
        for k in theta:
            np.testing.assert_allclose(rt.states["all"][k], expected[k], rtol=1e-5, atol=1e-7, err_msg=f"{workers} workers")


@pytest.mark.slow
def test_500_client_federated_run_and_resume(tmp_path, shared_data):
    from elora_ray.federated.stage import federated_stage

    # one target per window keeps 658 clients cheap; every-position targets run end to end in
    # test_clients_from_several_sources_and_groups_scored_against_them
    cfg = _cfg(tmp_path, shared_data, "  targets: last\n")
    out = tmp_path / "run"
    report = federated_stage(cfg, out)
    fed = out / "federated"
    assert report["clients"] >= 500
    assert set(report["methods"]) == {"base", "fedavg", "mtl_ft", "ensemble"}
    for m, r in report["methods"].items():
        assert np.isfinite(r["test_loss"]) and r["clients_evaluated"] == report["clients"], m
    e = report["methods"]["ensemble"]
    # 4 group adapters warm-started from FedAvg, FedAvg itself as a candidate member, 1 boosting learner
    assert e["groups"] == 4 and len(e["boost"]) == 1 and e["adapters"] == 6 and e["warm_start"]
    weights = json.loads((fed / "weights.json").read_text())
    assert weights["members"] == ["group-0", "group-1", "group-2", "group-3", "fedavg"]
    assert all(len(w) == 5 and abs(sum(w) - 1) < 1e-6 for w in weights["weights"].values())
    # the ensemble pays for the global FedAvg it starts from
    assert e["flops_breakdown"]["global_fedavg"] == pytest.approx(report["methods"]["fedavg"]["train_flops"])
    assert json.loads((fed / "groups.json").read_text())["affinity"] == "first_order"
    groups = json.loads((fed / "groups.json").read_text())["groups"]
    assert sorted(c for g in groups for c in g) == sorted(json.loads((fed / "clients.json").read_text())["clients"])
    # MTL-FT pays for FedAvg plus a fine-tuning pass per client
    assert report["methods"]["mtl_ft"]["train_flops"] > report["methods"]["fedavg"]["train_flops"]
    for f in ("report.md", "per_client.csv", "plots/federated_test_loss.png", "affinity.csv", "weights.json",
              "adapters/fedavg.safetensors", "adapters/group-0.safetensors", "adapters/boost-0.safetensors"):
        assert (fed / f).is_file(), f
    # a rerun reuses every finished method (same numbers, nothing retrained)
    before = (fed / "checkpoints" / "ensemble.safetensors").stat().st_mtime_ns
    again = federated_stage(cfg, out)
    assert again["methods"]["ensemble"]["test_loss"] == e["test_loss"]
    assert (fed / "checkpoints" / "ensemble.safetensors").stat().st_mtime_ns == before


def test_federated_cli_rejects_an_encoder(tmp_path, capsys):
    from elora_ray.cli import main

    rc = main(["federated", "--out", str(tmp_path / "x"), "--set", "model.name_or_path=tiny-bert"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "is an encoder" in err and "smollm2" in err
    assert not (tmp_path / "x" / "federated" / "windows.parquet").exists()


def test_too_few_clients_is_a_clear_error(tmp_path):
    from elora_ray.federated.clients import select_clients

    play = tmp_path / "play.txt"
    play.write_text(PLAY)
    cfg = FederatedConfig(context_tokens=2, stride=2, min_clients=5, min_client_chars=1)
    clients = make_clients(parse_speeches(play.read_text()), cfg.client_chars, cfg.min_client_chars)
    with pytest.raises(DataError, match=r"play.txt: .*gives 2 usable clients, fewer than federated.min_clients=5"):
        select_clients(clients, _ToyTokenizer(), cfg, str(play))


def test_client_progress_survives_a_torn_line_and_resumes(tmp_path):
    from elora_ray.federated.journal import ClientProgress

    p = ClientProgress(tmp_path / "progress" / "mtl_ft.jsonl")
    assert p.done == {} and p.seconds_before == 0.0
    p.add("c1", {"loss": 1.5, "n": 4})
    p.add("c2", {"loss": 2.5, "n": 3})
    with open(p.path, "a") as f:
        f.write('{"client": "c3", "loss": 0.')  # killed while writing
    again = ClientProgress(p.path)
    assert again.done == {"c1": {"loss": 1.5, "n": 4}, "c2": {"loss": 2.5, "n": 3}}
    complete = [json.loads(line) for line in p.path.read_text().splitlines()]
    assert [r["client"] for r in complete] == ["c1", "c2"]  # the torn line was dropped from the file
    assert again.seconds_before == pytest.approx(max(r["elapsed_s"] for r in complete)) and again.seconds_before > 0
    again.add("c3", {"loss": 0.5, "n": 2})
    assert set(ClientProgress(p.path).done) == {"c1", "c2", "c3"}
    assert ClientProgress(p.path, reset=True).done == {}


def test_federated_subset_fits_are_the_estimate_stages_own():
    """The federated affinity's subset regressions go through estimate.stage.solve_chunk, fitting on the
    members' training windows and scoring each member client on its held-out validation windows: the
    same numbers as fitting the surrogate directly."""
    from elora_ray.estimate.surrogate import evaluate, fit_surrogate
    from elora_ray.federated.affinity import fit_subsets

    rng = np.random.default_rng(0)

    def part(n):
        return rng.normal(size=(n, 8)).astype(np.float32), rng.normal(size=n).astype(np.float32)

    feats = {f"c{i}": (*part(20), *part(6)) for i in range(4)}
    names = sorted(feats)
    rows, gains = fit_subsets([(0, (0, 2)), (1, (1, 3))], feats, names, 1e-3)
    assert gains == []
    assert [(r["subset_id"], r["task"]) for r in rows] == [(0, "c0"), (0, "c2"), (1, "c1"), (1, "c3")]
    for r in rows:
        g = np.concatenate([feats[c][0] for c in r["members"]])
        h = np.concatenate([feats[c][1] for c in r["members"]])
        loss, acc = evaluate(*feats[r["task"]][2:], fit_surrogate(g, h, 1e-3).w)  # validation windows
        assert r["loss"] == pytest.approx(loss, rel=1e-9) and r["accuracy"] == pytest.approx(acc)


def test_clients_from_several_sources_and_groups_scored_against_them(tmp_path):
    """federated.sources: clients cut from other texts (here two jsonl files of clearly different text,
    no play), named <source>#<k>; a max_clients cap takes them in turn from each source; the groups
    are scored against the clients' origins (ARI / NMI in groups.json and report.md). FedAvg on Ray
    Train (engine: ray_train, the pool handing its CPUs over and back) gives FedAvg's numbers again."""
    from elora_ray.federated.clients import Client, round_robin
    from elora_ray.federated.stage import federated_stage

    assert [c.name for c in round_robin([Client(f"a#{i}", "a", "", "a") for i in range(3)]
                                        + [Client(f"b#{i}", "b", "", "b") for i in range(3)], 4)] == \
        ["a#0", "b#0", "a#1", "b#1"]
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    vocab = {"digits": [str(i) * 3 for i in range(10)], "words": ["apple", "river", "stone", "cloud", "grass", "light"]}
    for name, words in vocab.items():
        with (data / f"{name}.jsonl").open("w") as fh:
            for i in range(600):
                fh.write(json.dumps({"text": " ".join(rng.choice(words, size=12)), "label": str(i % 2)}) + "\n")
    (tmp_path / "fed.yaml").write_text(TINY.replace("num_groups: 4", "num_groups: 2").replace("client_fraction: 0.05", "client_fraction: 0.2")
                                       + """  include_play: false
  client_chars: 1200
  min_client_chars: 300
  min_clients: 20
  max_clients: 30
  methods: [fedavg, ensemble, random_groups]
  sources:
    - {name: digits, train: data/digits.jsonl}
    - {name: words, train: data/words.jsonl}
""")
    cfg = load_config(tmp_path / "fed.yaml")
    report = federated_stage(cfg, tmp_path / "run")
    fed = tmp_path / "run" / "federated"
    meta = json.loads((fed / "clients.json").read_text())
    assert meta["num_clients"] == 30 and sorted(set(meta["source_of"].values())) == ["digits", "words"]
    assert sum(v == "digits" for v in meta["source_of"].values()) == 15  # the cap took them in turn
    assert all(c.startswith(meta["source_of"][c] + "#") for c in meta["clients"])
    groups = json.loads((fed / "groups.json").read_text())
    agree = groups["agreement_with_sources"]
    assert agree["sources"] == 2
    assert agree["ari"] > 0.8, groups["groups"]  # digits and words are told apart from their gradients
    assert report["grouping"]["agreement_with_sources"] == agree
    assert "against the clients' 2 sources: ARI" in (fed / "report.md").read_text()
    # the control: the same procedure on random groups of the ensemble's sizes
    rand = json.loads((fed / "random_groups.json").read_text())
    assert sorted(map(len, rand["groups"])) == sorted(map(len, groups["groups"]))
    assert sorted(c for g in rand["groups"] for c in g) == sorted(meta["clients"])
    assert {"fedavg", "ensemble", "random_groups"} <= set(report["methods"])
    assert (fed / "adapters" / "random-0.safetensors").is_file() and (fed / "weights_random.json").is_file()
    assert report["methods"]["fedavg"]["client_updates"] == 2 * 6  # 2 rounds × 20% of 30 clients

    rt = load_config(tmp_path / "fed.yaml", ["federated.engine=ray_train", "federated.methods=[fedavg]"])
    again = federated_stage(rt, tmp_path / "run_rt")["methods"]["fedavg"]
    assert (tmp_path / "run_rt" / "federated" / "checkpoints" / "fedavg-ray_train" / "done.json").is_file()
    assert again["client_updates"] == report["methods"]["fedavg"]["client_updates"]
    assert again["test_loss"] == pytest.approx(report["methods"]["fedavg"]["test_loss"], rel=1e-4)


def test_federated_fingerprint_keeps_a_run_current_across_spellings_of_the_same_m_rule():
    """Clients have independent affinity halves, so ``cluster.select_m: auto`` is the held-out rule here:
    a run made with ``heldout`` must stay current under ``auto`` (and not under another rule)."""
    from elora_ray.federated.stage import _fingerprint

    def fp(*sets: str) -> dict:
        return _fingerprint(load_config(None, ["model.name_or_path=tiny-llama", *sets]))

    assert fp("cluster.select_m=auto") == fp("cluster.select_m=heldout")
    assert fp("cluster.select_m=auto") != fp("cluster.select_m=eigengap")
    # the paper kind has no halves: there auto is the eigengap
    assert fp("cluster.select_m=auto", "estimate.affinity=paper") == fp("cluster.select_m=eigengap", "estimate.affinity=paper")
    # local scaling changes the groups of a fixed m or the eigengap, not those of the held-out rule
    assert fp("federated.num_groups=auto", "cluster.local_scaling=2") == fp("federated.num_groups=auto", "cluster.local_scaling=null")
    assert fp("cluster.select_m=eigengap", "cluster.local_scaling=2") != fp("cluster.select_m=eigengap", "cluster.local_scaling=null")
    assert fp("federated.num_groups=3", "cluster.local_scaling=2") != fp("federated.num_groups=3", "cluster.local_scaling=3")
