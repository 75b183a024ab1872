"""Safety: weights only from safetensors, no remote code unless asked, no secrets in logs."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from elora_ray.cli import main
from elora_ray.config import ModelConfig
from elora_ray.errors import ModelError
from elora_ray.models.registry import load_hf_config, resolve_model_dir
from elora_ray.runlog import redact, setup_logging

EVIL = """
import pathlib
pathlib.Path(__file__).with_name("EXECUTED").write_text("remote code ran")
from transformers import PretrainedConfig
class EvilConfig(PretrainedConfig):
    model_type = "evilnet"
"""


def _model_dir(tmp_path, *, weights: str | None, remote_code: bool = False):
    d = tmp_path / "model"
    d.mkdir()
    config = {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 8, "vocab_size": 16}
    if remote_code:
        config = {"model_type": "evilnet", "auto_map": {"AutoConfig": "evil_config.EvilConfig"}}
        (d / "evil_config.py").write_text(EVIL)
    (d / "config.json").write_text(json.dumps(config))
    if weights == "pickle":
        torch.save({"w": torch.zeros(2)}, d / "pytorch_model.bin")
    elif weights == "safetensors":
        save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
    return d


def test_pickle_weights_are_never_loaded(tmp_path):
    d = _model_dir(tmp_path, weights="pickle")
    with pytest.raises(ModelError, match=r"no \*\.safetensors weights.*pytorch_model\.bin.*never loaded"):
        resolve_model_dir(ModelConfig(name_or_path=str(d)))


def test_remote_code_is_not_run_unless_the_user_turns_it_on(tmp_path, capsys):
    d = _model_dir(tmp_path, weights="safetensors", remote_code=True)
    assert ModelConfig().trust_remote_code is False
    with pytest.raises(ModelError, match="trust_remote_code"):
        load_hf_config(d)
    assert not (d / "EXECUTED").exists()
    # Through the CLI too: the error names the option, and nothing from the model folder executes.
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(20)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name_or_path: {d}}}\ntasks: [{{name: a, train: {data}}}]\n")
    assert main(["check-model", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    assert "trust_remote_code" in capsys.readouterr().err
    assert not (d / "EXECUTED").exists()


def test_adapters_without_safetensors_are_refused(tmp_path):
    from elora_ray.adapters.api import load_adapter

    d = tmp_path / "adapter"
    d.mkdir()
    torch.save({"w": torch.zeros(2)}, d / "adapter_model.bin")
    with pytest.raises(ModelError, match="only safetensors"):
        load_adapter(None, d)  # refused before the base model is even looked at


def test_secrets_are_redacted_in_the_run_log_and_on_the_console(tmp_path, monkeypatch, capsys):
    hf = "hf_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3"
    ray_token = "0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", hf)
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_token)
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "correct-horse-battery")
    assert redact(f"token={hf}") == "token=***"
    assert redact("mlflow at https://alice:s3cr3t@mlflow.example.com/") == "mlflow at https://***@mlflow.example.com/"
    assert redact("key AKIAABCDEFGHIJKLMNOP here") == "key *** here"
    assert redact("plain text with sample ids t/a/1") == "plain text with sample ids t/a/1"
    setup_logging(tmp_path)
    log = logging.getLogger("elora.test")
    log.info("connecting with %s and %s, password correct-horse-battery", hf, ray_token)
    try:
        raise RuntimeError(f"auth failed for Bearer {ray_token}")
    except RuntimeError:
        log.exception("request failed")
    for h in logging.getLogger().handlers:
        h.flush()
    text = (tmp_path / "run.log").read_text() + capsys.readouterr().err
    for secret in (hf, ray_token, "correct-horse-battery"):
        assert secret not in text
    assert text.count("***") >= 4 and "connecting with" in text


def test_cli_errors_are_redacted(tmp_path, monkeypatch, capsys):
    token = "hf_" + "Z" * 30
    monkeypatch.setenv("HF_TOKEN", token)
    assert main(["validate", "--config", str(tmp_path / f"{token}.yaml")]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and token not in err and "***" in err
