"""Options of the serving application: ``elora serve`` flags, or the ``args`` of a Serve config
(``serve run elora_ray.serve.app:build_app run=runs/x replicas=2``; values given as strings on
``serve run``'s command line are converted, and a wrong one is an error naming the option)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError


class ServeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: str = Field(description="finished run directory (on storage every node of the cluster mounts)")
    replicas: int = Field(1, ge=1, description="model replicas (EloraModel's num_replicas)")
    num_cpus: float = Field(1.0, ge=0, description="CPUs each model replica reserves")
    num_gpus: float = Field(0.0, ge=0, description="GPUs each model replica reserves (a fraction packs replicas on one GPU)")
    device: str = Field("auto", description="auto (cuda when the replica reserved a GPU, else cpu), cpu, cuda or cuda:N")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per replica (default: its CPUs, at least 1)")
    max_batch_size: int = Field(32, ge=1, description="texts per forward pass, gathered across concurrent requests")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="how long a batch waits to fill up")
    max_ongoing_requests: int = Field(64, ge=1, description="requests one model replica holds at once (queue for batching)")
    ingress_replicas: int = Field(1, ge=1, description="replicas of the HTTP ingress (no model; 0 CPUs)")
    max_items: int = Field(256, ge=1, description="texts in one request")
    max_text_chars: int = Field(20_000, ge=1, description="characters in one text or text pair")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1, description="bytes of one request body")
    retries: int = Field(3, ge=0, description="times the ingress re-sends a request whose model replica died")
    access_log: bool = Field(True, description="Serve's per-request log lines (ingress and model replicas); off saves CPU")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return v

    @classmethod
    def parse(cls, args: dict) -> "ServeOptions":
        """Options from a dict (a Serve config's ``args``); errors name the option."""
        if not isinstance(args, dict):
            raise ConfigError(f"serve options must be a mapping, got {type(args).__name__}")
        try:
            return cls.model_validate(args)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "options"
            raise ConfigError(f"serve option {where}: {first['msg']}") from None
