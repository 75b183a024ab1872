"""The `elora` command line end to end on tiny models (prepare → model check → report)."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import TINY

from elora_ray.cli import main
from elora_ray.observe import read_metrics


def test_help_for_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "prepare", "check-model", "featurize", "estimate", "cluster", "validate", "config", "suite", "formats"):
        assert cmd in out
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "usage: elora " + cmd in capsys.readouterr().out


def test_console_script_is_installed():
    r = subprocess.run([sys.executable, "-m", "elora_ray.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "EnsembleLoRA" in r.stdout


def test_run_writes_artifacts_and_resumes(tiny_pipeline, copy_run, caplog, capsys):
    """`elora run` (the session's tiny pipeline, run through the CLI once) wrote every artifact; a
    second `elora run` resumes without redoing or re-logging anything; bad settings are clean errors."""
    cfg, shared, _ = tiny_pipeline
    out = copy_run(shared)
    tiny = [a for s in TINY for a in ("--set", s)]
    report = json.loads((out / "report.json").read_text())
    assert report["stages"] == ["prepare", "model_check", "featurize", "estimate", "cluster", "train", "boost",
                                "combine", "baselines", "evaluate"]
    assert set(report["methods"]) == {"ensemble", *cfg.baselines.methods}
    for f in ("ensemble/members.json", "ensemble/weights.json", "plots/per_task_accuracy.png", "plots/cost_vs_accuracy.png"):
        assert (out / f).is_file(), f
    groups = json.loads((out / "groups.json").read_text())
    assert sorted(t for g in report["groups"] for t in g) == sorted(manifest_tasks(out))
    assert groups["groups"] == report["groups"]
    # planted_ari is the adjusted Rand index of these groups against the suite's planted partition
    from sklearn.metrics import adjusted_rand_score

    from elora_ray.tasks.suite import planted_groups

    truth = {t: g for g, grp in enumerate(planted_groups(cfg.suite)) for t in grp}
    found = {t: g for g, grp in enumerate(groups["groups"]) for t in grp}
    assert groups["planted_ari"] == pytest.approx(adjusted_rand_score([truth[t] for t in sorted(truth)],
                                                                      [found[t] for t in sorted(truth)]))
    assert (out / "affinity.csv").is_file() and (out / "plots" / "affinity.png").stat().st_size > 0
    assert (out / "report.md").is_file() and (out / "run.log").is_file() and (out / "config.yaml").is_file()
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    first = sorted(manifest["tasks"])[0]
    assert len(manifest["tasks"]) == sum(cfg.suite.tasks_per_group)
    table = pq.read_table(out / "data" / first / "train.parquet")
    assert table.column_names == ["task", "split", "sample_id", "text", "text_pair", "label", "label_id", "unit"]
    assert len(set(table.column("sample_id").to_pylist())) == table.num_rows
    model = json.loads((out / "model.json").read_text())
    assert model["kind"] == "encoder" and model["adapter_parameters"] > 0 and model["params_with_gradient"] > 0

    # Observability (report_to: tensorboard, the default): per-step training curves per adapter,
    # stage summaries and per-method results, as JSON lines and TensorBoard event files.
    from test_observe import read_tensorboard_scalars

    jobs = sorted(p.stem for p in (out / "metrics" / "train").glob("*.jsonl"))
    assert "group-0" in jobs and len(jobs) >= len(report["groups"]) + 1  # groups + the single-adapter baseline
    curve = [r for r in read_metrics(out, "train/group-0") if "train/loss" in r]
    assert [r["step"] for r in curve] == list(range(1, len(curve) + 1)) and len(curve) >= 2
    assert any("validation/accuracy" in r for r in read_metrics(out, "train/group-0"))
    tb = read_tensorboard_scalars(out / "tensorboard" / "train" / "group-0")
    assert [v for _, v in tb["train/loss"]] == pytest.approx([r["train/loss"] for r in curve])
    ens = read_metrics(out, "evaluate/ensemble")
    assert ens[-1]["avg_accuracy"] == pytest.approx(report["methods"]["ensemble"]["avg_accuracy"])
    assert read_metrics(out, "stages/featurize")[-1]["samples"] == report["featurize"]["samples"]
    logged_before = {p: p.stat().st_size for p in (out / "metrics").rglob("*.jsonl")}

    before = (out / "data" / first / "train.parquet").stat().st_mtime_ns
    caplog.clear()
    assert main(["run", "--out", str(out), *tiny]) == 0
    assert {p: p.stat().st_size for p in (out / "metrics").rglob("*.jsonl")} == logged_before  # a resume adds nothing
    assert (out / "data" / first / "train.parquet").stat().st_mtime_ns == before
    assert "already prepared" in caplog.text
    assert "features complete" in caplog.text and "results complete" in caplog.text and "up to date" in caplog.text
    assert "already trained" in caplog.text and "weights already fit" in caplog.text and "evaluation.json is current" in caplog.text
    # the resumed report keeps the timings of the run that did the work and says what it skipped
    again = json.loads((out / "report.json").read_text())
    heavy = ["featurize", "estimate", "cluster", "train", "boost", "combine", "baselines", "evaluate"]
    assert set(heavy) <= set(again["stages_skipped"])
    assert {k: again["stage_seconds"][k] for k in heavy} == {k: report["stage_seconds"][k] for k in heavy}
    assert report["stage_seconds"]["train"] > 1.0 and "current and skipped" in (out / "report.md").read_text()

    # Settings that cannot work for these tasks are clean errors and leave the artifacts alone.
    n = len(manifest["tasks"])
    groups_before, affinity_before = (out / "groups.json").read_bytes(), (out / "affinity.csv").read_bytes()
    config_before = (out / "config.yaml").read_bytes()
    assert main(["cluster", "--out", str(out), *tiny, "--set", "cluster.num_groups=50"]) == 2
    assert main(["estimate", "--out", str(out), *tiny, "--set", "estimate.subset_size=50"]) == 2
    err = capsys.readouterr().err
    assert "cluster:" in err and f"estimate.subset_size=50 exceeds the number of tasks ({n})" in err and "Traceback" not in err
    assert (out / "groups.json").read_bytes() == groups_before and (out / "affinity.csv").read_bytes() == affinity_before
    assert (out / "estimate" / "summary.json").is_file()
    # ...and their settings do not stick: config.yaml is the last successful command's, which the next
    # command without --config starts from
    assert (out / "config.yaml").read_bytes() == config_before

    # `elora evaluate --force` recomputes evaluation.json (same numbers); without it the stage is skipped.
    evaluation = out / "evaluation.json"
    stamp = evaluation.stat().st_mtime_ns
    assert main(["evaluate", "--out", str(out), *tiny]) == 0 and evaluation.stat().st_mtime_ns == stamp
    assert main(["evaluate", "--out", str(out), *tiny, "--force"]) == 0 and evaluation.stat().st_mtime_ns > stamp
    assert json.loads(evaluation.read_text())["methods"] == report["methods"]


def test_verbose_turns_on_debug_logging_for_any_command(tiny_pipeline, copy_run):
    import logging

    from elora_ray.runlog import set_verbose

    cfg, shared, _ = tiny_pipeline
    out = copy_run(shared)
    try:
        assert main(["cluster", "--out", str(out), "--verbose", *[a for s in TINY for a in ("--set", s)]]) == 0
        assert logging.getLogger().level == logging.DEBUG
        assert main(["cluster", "--out", str(out), *[a for s in TINY for a in ("--set", s)]]) == 0
        assert logging.getLogger().level == logging.INFO
    finally:
        set_verbose(False)


def manifest_tasks(out):
    return list(json.loads((out / "data" / "manifest.json").read_text())["tasks"])


def test_validate_checks_the_model_name_without_loading_it(capsys):
    assert main(["validate", "--set", "model.name_or_path=no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "model.name_or_path 'no-such-model' is not a known name" in err and "Traceback" not in err
    assert main(["validate", "--set", "model.name_or_path=tiny-bert"]) == 0
    assert "model tiny-bert (encoder)" in capsys.readouterr().out


def test_bad_config_is_a_clean_error(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("adapter: {type: lora, rnak: 4}\n")
    assert main(["validate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "adapter.rnak: unknown key" in err and "Traceback" not in err


def test_bad_data_leaves_previous_artifacts_intact(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(30)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name_or_path: tiny-bert}}\ntasks: [{{name: a, train: {good}}}]\n")
    out = tmp_path / "run"
    assert main(["prepare", "--config", str(cfg), "--out", str(out)]) == 0
    manifest = (out / "data" / "manifest.json").read_text()

    good.write_text(good.read_text() + '{"text": "broken", "label": \n')
    assert main(["prepare", "--config", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "good.jsonl:31" in err
    assert (out / "data" / "manifest.json").read_text() == manifest
    assert not list(out.rglob("*.tmp"))


def test_a_command_on_an_existing_run_without_config_uses_the_runs_own_config(tmp_path, capsys, caplog):
    """No --config: a stage command on a run starts from that run's config.yaml (its --set overrides on
    top), so it reuses what the run computed; the embedded default would prepare other tasks."""
    import yaml

    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(30)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name_or_path: tiny-bert}}\ntasks: [{{name: a, train: {good}}}]\n")
    out = tmp_path / "run"
    assert main(["prepare", "--config", str(cfg), "--out", str(out), "--set", "adapter.rank=3"]) == 0
    manifest = (out / "data" / "manifest.json").read_text()
    capsys.readouterr()
    caplog.clear()
    assert main(["prepare", "--out", str(out)]) == 0
    assert f"config: {out / 'config.yaml'} (this run's own" in capsys.readouterr().err
    assert "already prepared" in caplog.text and (out / "data" / "manifest.json").read_text() == manifest
    assert yaml.safe_load((out / "config.yaml").read_text())["adapter"]["rank"] == 3
    assert main(["prepare", "--out", str(out), "--set", "adapter.rank=5"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["adapter"]["rank"] == 5 and [t["name"] for t in saved["tasks"]] == ["a"]
    # a folder with a config.yaml but no prepared data (here: an exported suite) is not a run
    assert main(["suite", "--out", str(tmp_path / "s"), "--samples-per-task", "30"]) == 0
    capsys.readouterr()
    assert main(["prepare", "--out", str(tmp_path / "s")]) == 0
    assert "this run's own" not in capsys.readouterr().err


def test_suite_export_round_trips_through_the_generic_reader(tmp_path):
    assert main(["suite", "--out", str(tmp_path / "s"), "--samples-per-task", "30"]) == 0
    from elora_ray.config import SuiteConfig, load_config
    from elora_ray.tasks.load import load_tasks
    from elora_ray.tasks.suite import generate_suite

    exported = load_tasks(load_config(tmp_path / "s" / "config.yaml"))
    original = generate_suite(SuiteConfig(samples_per_task=30))
    assert [t.name for t in exported] == [t.name for t in original]
    for a, b in zip(exported, original):
        assert a.labels == b.labels
        assert [e.text for e in a.splits["train"]] == [e.text for e in b.splits["train"]]
        assert [e.label for e in a.splits["test"]] == [e.label for e in b.splits["test"]]
    groups = json.loads((tmp_path / "s" / "groups.json").read_text())["planted_groups"]
    assert sum(len(g) for g in groups) == len(original)


def test_decoder_run_reports_truncation(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [{"text": ("long words " * 60 if i < 3 else "short"), "label": ["no", "yes"][i % 2]} for i in range(40)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name_or_path: tiny-llama, max_length: 32}}\ntasks: [{{name: qa, train: {data}}}]\n")
    out = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 0
    model = json.loads((out / "model.json").read_text())
    assert model["kind"] == "decoder"
    assert model["truncated"]["qa"] == {"count": 3, "of": 40}
    assert "| qa |" in (out / "report.md").read_text()


def test_validate_runs_the_model_checks_that_need_only_the_tokenizer(tmp_path, capsys, caplog):
    """What `run` would stop at before training, `validate` finds: verbalizer words sharing a first token
    (decoders only: an encoder never scores them), and truncation (a warning, the model check's count)."""
    data = tmp_path / "d.jsonl"
    rows = [{"text": ("long words " * 60 if i < 3 else "short"), "label": ["no", "yes"][i % 2]} for i in range(40)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "c.yaml"
    task = f"{{name: qa, train: {data}, verbalizer: {{'no': not good, 'yes': not bad}}}}"
    cfg.write_text(f"model: {{name_or_path: tiny-llama, max_length: 32}}\ntasks: [{task}]\n")
    assert main(["validate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "task 'qa': verbalizer words ['not good', 'not bad'] share a first token ('not')" in err
    assert "Traceback" not in err
    assert main(["validate", "--config", str(cfg), "--set", "model.name_or_path=tiny-bert"]) == 0
    caplog.clear()
    assert main(["validate", "--config", str(cfg), "--set", "tasks.0.verbalizer.yes=fine"]) == 0
    assert "words=['not good', 'fine'] truncated=3" in capsys.readouterr().out
    assert "task qa: 3 of 40 samples exceed model.max_length=32; their text is truncated (the Answer: suffix" in caplog.text


def test_elora_set_overrides_come_before_the_command_line_and_bad_entries_are_named(monkeypatch, capsys):
    from elora_ray.cli import main

    monkeypatch.setenv("ELORA_SET", "train.epochs=1; adapter.rank=2")
    assert main(["config", "--set", "adapter.rank=5"]) == 0
    out, err = capsys.readouterr()
    assert "epochs: 1.0" in out and "rank: 5" in out and "overrides from $ELORA_SET" in err
    monkeypatch.setenv("ELORA_SET", "train.epochs=1;bogus")
    assert main(["config"]) == 2
    assert "$ELORA_SET: 'bogus' is not key=value" in capsys.readouterr().err


def test_the_model_check_is_never_reported_skipped_even_when_its_result_repeats(tmp_path, monkeypatch):
    """A stage counts as skipped when its result equals the last one; the model check loads the model
    on every invocation, so a repeat of its result (its load time rounded the same) is still work done.
    Found as a flaky bucket-resume test: two loads took the same 0.01 s-rounded time."""
    from elora_ray import model_check
    from elora_ray.config import load_config
    from elora_ray.pipeline import run_stages

    monkeypatch.setattr(model_check, "check_model_on_worker", lambda cfg, out: {"seconds": 1.0})
    cfg = load_config(None, list(TINY))
    run_stages(cfg, tmp_path / "run", until="model_check")
    again = run_stages(cfg, tmp_path / "run", until="model_check")
    assert again["_skipped"] == ["prepare"]
