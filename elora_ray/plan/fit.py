"""The resource plan of a run: each stage's processes, devices and peak memory, checked against the
machines it will run on, before anything loads.

``build_plan(cfg, node)`` needs only the config (and the model's ``config.json``); ``Plan.problems``
lists what cannot fit, each with the settings that would make it fit (checked with the same
estimates), and ``Plan.check()`` raises :class:`~elora_ray.errors.ConfigError` with them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

from ..config import RunConfig
from ..errors import ConfigError
from ..models.placement import packed_gpu_share, processes_at_once
from .memory import GiB, HOST_BASELINE, VALIDATION_BATCH, Resources, StagePlan, stage_memory
from .shape import ModelShape, model_shape


@dataclass(frozen=True)
class NodeShape:
    """The machines a run will use: ``nodes`` workers of one shape, and the head."""

    cpus: int
    host_bytes: int
    gpus: int = 0
    gpu_bytes: int = 0
    nodes: int = 1
    head_bytes: int | None = None
    """Memory of the head (the driver's machine); default ``host_bytes``."""
    bf16: bool = True
    """Whether the GPUs run bf16 natively (compute capability ≥ 8.0)."""
    source: str = "given"

    @classmethod
    def this_machine(cls) -> "NodeShape":
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        gpus, gpu_bytes, bf16 = 0, 0, True
        try:
            import torch

            if torch.cuda.is_available():
                gpus = torch.cuda.device_count()
                props = torch.cuda.get_device_properties(0)
                gpu_bytes, bf16 = int(props.total_memory), props.major >= 8
        except Exception:  # noqa: BLE001 - no usable CUDA: a CPU machine
            pass
        return cls(cpus=os.cpu_count() or 1, host_bytes=host, gpus=gpus, gpu_bytes=gpu_bytes, bf16=bf16, source="this machine")

    def describe(self) -> str:
        gpu = f", {self.gpus}×{fmt_bytes(self.gpu_bytes)} GPU" if self.gpus else ", no GPU"
        head = f"; head {fmt_bytes(self.head_bytes)}" if self.head_bytes is not None else ""
        return f"{self.nodes} node(s) of {self.cpus} CPUs, {fmt_bytes(self.host_bytes)} RAM{gpu}{head} ({self.source})"


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``80GB``, ``80 GiB``, ``16g``, ``1.5TiB`` → bytes (GB = 10⁹, GiB = 2³⁰)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"cannot read {text!r} as a size (e.g. 80GB, 24GiB, 16g)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "?"
    return f"{n / GiB:.1f} GiB" if n >= 0.1 * GiB else f"{n / 2**20:.0f} MiB"


@dataclass
class Problem:
    stage: str
    message: str
    fixes: list[str] = field(default_factory=list)

    def text(self) -> str:
        fix = ("; settings that fit: " + ", ".join(self.fixes)) if self.fixes else ""
        return f"{self.stage}: {self.message}{fix}"


@dataclass
class Plan:
    shape: ModelShape
    node: NodeShape
    stages: list[StagePlan]
    problems: list[Problem]

    @property
    def fits(self) -> bool:
        return not self.problems

    def check(self) -> "Plan":
        if self.problems:
            raise ConfigError("the run does not fit " + self.node.describe() + ":\n  "
                              + "\n  ".join(p.text() for p in self.problems))
        return self

    def to_dict(self) -> dict:
        return {"model": self.shape.to_dict(), "node": self.node.__dict__, "fits": self.fits,
                "stages": [s.to_dict() for s in self.stages], "problems": [p.text() for p in self.problems]}

    def table(self) -> str:
        head = "| stage | runs as | processes | device | weights | batch | peak device | peak host |\n|---|---|---|---|---|---|---|---|\n"
        rows = []
        for s in self.stages:
            dev = s.device + (f" ({s.resources.gpus:g} GPU)" if s.resources.gpus else "")
            dtype = f"{s.dtype}, {s.compute}" + (", ckpt" if s.gradient_checkpointing else "")
            rows.append(f"| {s.stage} | {s.where} | {s.processes} | {dev} | {fmt_bytes(s.weights_bytes)} ({dtype}) | "
                        f"{s.batch_size} | {fmt_bytes(s.device_peak_bytes) if s.device == 'cuda' else '–'} | "
                        f"{fmt_bytes(s.host_peak_bytes)} |")
        return head + "\n".join(rows) + "\n"


def _precision(cfg: RunConfig, device: str, node: NodeShape) -> str:
    p = cfg.compute.precision
    if p in ("auto", "native"):
        if device == "cuda":
            return "bf16" if node.bf16 else "fp32"
        if p == "native" and node.source == "this machine":
            from ..models.precision import native_cpu_bf16

            return "bf16" if native_cpu_bf16() else "fp32"
        return "fp32"
    return p


def _dtype(cfg: RunConfig, device: str, node: NodeShape) -> str:
    """``model.dtype`` as the process will load it (``auto``: bf16 on GPUs with native bf16)."""
    if cfg.model.dtype == "auto":
        return "bfloat16" if device == "cuda" and node.bf16 else "float32"
    return cfg.model.dtype


def _featurize_resources(cfg: RunConfig, node: NodeShape, share: float = 1.0) -> tuple[Resources, int]:
    """Featurize actors' resources and count; ``share``: what ``gpus_per_actor: auto`` resolved to."""
    f = cfg.featurize
    total_gpus = node.gpus * node.nodes
    per = (share if total_gpus else 0.0) if f.gpus_per_actor == "auto" else float(f.gpus_per_actor)
    if f.actors == "auto":
        actors = processes_at_once(total_gpus, per, node.cpus * node.nodes, f.cpus_per_actor)
    else:
        actors = int(f.actors)
    return Resources(f.cpus_per_actor, per), max(1, actors)


def _train_resources(cfg: RunConfig, node: NodeShape, share: float = 1.0) -> tuple[Resources, int, str]:
    """A training process's resources and how many run at once; ``share``: ``gpus_per_worker: auto`` resolved."""
    t = cfg.train
    use_gpu = (node.gpus > 0) if t.use_gpu == "auto" else bool(t.use_gpu)
    gpus = (share if t.gpus_per_worker == "auto" else float(t.gpus_per_worker)) if use_gpu else 0.0
    if t.num_workers == 0:
        slots = processes_at_once(node.gpus * node.nodes, gpus, node.cpus * node.nodes, t.cpus_per_worker)
        return Resources(t.cpus_per_worker, gpus), max(1, slots), "Ray task (Train local mode), one per adapter"
    return Resources(t.cpus_per_worker, gpus), t.num_workers, "Ray Train worker (DDP)"


def _stage(name: str, where: str, processes: int, res: Resources, shape: ModelShape, cfg: RunConfig, node: NodeShape,
           kind: str, batch: int, checkpointing: bool = False, *, seq: int | None = None, positions: int = 1,
           validation_batch: int = VALIDATION_BATCH) -> StagePlan:
    from ..adapters import needs_quantized_base

    device = "cuda" if res.gpus > 0 else "cpu"
    quantized = needs_quantized_base(cfg.adapter)
    precision = _precision(cfg, device, node)
    dtype = _dtype(cfg, device, node)
    w, dev, host, parts = stage_memory(shape, dtype=dtype, quantized=quantized, device=device, precision=precision,
                                       batch=batch, seq=seq or cfg.model.max_length, kind=kind, cfg=cfg,
                                       checkpointing=checkpointing, positions=positions, validation_batch=validation_batch)
    label = f"{cfg.adapter.quant_type}+{dtype}" if quantized else dtype
    return StagePlan(name, where, processes, res, device, label, precision, batch, w, dev, host, parts, checkpointing)


def stage_plans(cfg: RunConfig, shape: ModelShape, node: NodeShape) -> list[StagePlan]:
    """Every stage of ``elora run`` that holds the model, plus the driver. An ``auto`` GPU setting
    (``featurize.gpus_per_actor``, ``train.gpus_per_worker``) gets :func:`packed_gpu_share` of the
    larger peak of the processes it applies to (the model check with the featurize actors, the
    exports with the training jobs)."""
    fres, actors = _featurize_resources(cfg, node)
    tres, workers, where = _train_resources(cfg, node)
    ckpt = gradient_checkpointing_on(cfg, shape)
    check = _stage("model_check", "Ray task (featurize resources)", 1, fres, shape, cfg, node, "check", check_batch_size(cfg))
    feat = _stage("featurize", "Ray Data actor", actors, fres, shape, cfg, node, "featurize", cfg.featurize.batch_size)
    train = _stage("train", where, workers, tres, shape, cfg, node, "train", micro_batch_size(cfg), ckpt)
    outputs = _stage("outputs", "the training job, after training (and θ* reference jobs)", workers, tres, shape, cfg,
                     node, "inference", cfg.evaluate.batch_size)
    if cfg.featurize.gpus_per_actor == "auto" and fres.gpus:  # the peak does not depend on the share
        share = packed_gpu_share(max(check.device_peak_bytes, feat.device_peak_bytes), node.gpu_bytes)
        fres, feat.processes = _featurize_resources(cfg, node, share)
        check.resources = feat.resources = fres
    if cfg.train.gpus_per_worker == "auto" and tres.gpus:
        share = packed_gpu_share(max(train.device_peak_bytes, outputs.device_peak_bytes), node.gpu_bytes,
                                 collective_ranks=cfg.train.num_workers)
        tres, workers, _ = _train_resources(cfg, node, share)
        train.resources = outputs.resources = tres
        train.processes = outputs.processes = workers
    driver = StagePlan("driver", "head (prepare, estimate, cluster, combine, report)", 1, Resources(1, 0), "cpu", "none",
                       "–", 0, 0, HOST_BASELINE, HOST_BASELINE, {"baseline": HOST_BASELINE})
    return [driver, check, feat, train, outputs]


def check_batch_size(cfg: RunConfig) -> int:
    """The model check's one training batch: the first sample of each of the first 8 tasks."""
    tasks = len(cfg.tasks) if cfg.tasks else sum(cfg.suite.tasks_per_group)
    return min(8, max(1, tasks))


def micro_batch_size(cfg: RunConfig) -> int:
    mb = cfg.train.micro_batch_size
    return min(int(mb), cfg.train.batch_size) if mb != "auto" else cfg.train.batch_size


def gradient_checkpointing_on(cfg: RunConfig, shape: ModelShape) -> bool:
    from ..models.checkpointing import use_checkpointing

    return use_checkpointing(cfg.train.gradient_checkpointing, shape.kind, shape.parameters)


def _fits(s: StagePlan, node: NodeShape) -> tuple[bool, str]:
    """Whether one node holds the processes of ``s`` that Ray may pack onto it."""
    if s.device == "cuda":
        if not node.gpus:
            return False, "needs a GPU; the nodes have none"
        share = max(1, math.floor(1 / s.resources.gpus + 1e-9)) if s.resources.gpus < 1 else 1
        per_gpu = min(share, s.processes)
        need = per_gpu * s.device_peak_bytes
        if need > node.gpu_bytes:
            who = f"{per_gpu} processes with {s.resources.gpus:g} GPU each share one GPU and need" if per_gpu > 1 else \
                "one process needs"
            return False, f"{who} {fmt_bytes(need)} on a {fmt_bytes(node.gpu_bytes)} GPU"
        per_node = min(s.processes, int(node.gpus // s.resources.gpus), int(node.cpus // max(s.resources.cpus, 1e-9)))
    else:
        per_node = min(s.processes, max(1, int(node.cpus // max(s.resources.cpus, 1e-9))))
    host_need = per_node * s.host_peak_bytes
    if s.stage == "driver":
        head = node.head_bytes if node.head_bytes is not None else node.host_bytes
        if s.host_peak_bytes > head:
            return False, f"needs {fmt_bytes(s.host_peak_bytes)} on a {fmt_bytes(head)} head"
        return True, ""
    if host_need > node.host_bytes:
        return False, f"{per_node} process(es) on one node need {fmt_bytes(host_need)} of host memory, the node has {fmt_bytes(node.host_bytes)}"
    return True, ""


def _variants(cfg: RunConfig, s: StagePlan) -> list[tuple[str, list[str]]]:
    """Candidate fixes for stage ``s``, as (label, --set overrides), cheapest change first."""
    from ..adapter_types import adapter_type

    out: list[tuple[str, list[str]]] = []
    batch_key = {"featurize": "featurize.batch_size", "train": "train.batch_size", "outputs": "evaluate.batch_size",
                 "model_check": None}.get(s.stage)
    if s.stage == "train":
        batch_key = "train.micro_batch_size"
    if s.resources.gpus and s.resources.gpus < 1:
        key = {"featurize": "featurize.gpus_per_actor", "model_check": "featurize.gpus_per_actor"}.get(s.stage, "train.gpus_per_worker")
        out.append((f"{key}=1", [f"{key}=1"]))
    if batch_key and s.batch_size > 1:
        b = s.batch_size // 2
        while b >= 1:
            out.append((f"{batch_key}={b}", [f"{batch_key}={b}"]))
            b //= 2
    if s.stage == "train" and not s.gradient_checkpointing:
        out.append(("train.gradient_checkpointing=true", ["train.gradient_checkpointing=true"]))
    if s.dtype.endswith("float32"):
        out.append(("model.dtype=bfloat16", ["model.dtype=bfloat16"]))
    kind = adapter_type(cfg.adapter.type)
    if not kind.quantized:
        q = {"lora": "qlora", "adapter": "qadapter"}.get(cfg.adapter.type)
        if q:
            out.append((f"adapter.type={q}", [f"adapter.type={q}"]))
            out.append((f"adapter.type={q} + model.dtype=bfloat16", [f"adapter.type={q}", "model.dtype=bfloat16"]))
    return out


def build_plan(cfg: RunConfig, node: NodeShape | None = None, shape: ModelShape | None = None) -> Plan:
    node = node or NodeShape.this_machine()
    shape = shape or model_shape(cfg.model, cfg.adapter)
    stages = stage_plans(cfg, shape, node)
    problems: list[Problem] = []
    for s in stages:
        ok, why = _fits(s, node)
        if ok:
            continue
        fixes: list[str] = []
        smallest: tuple[int, str] | None = None
        for label, sets in _variants(cfg, s):
            alt_cfg = _with(cfg, sets)
            if alt_cfg is None:
                continue
            alt_shape = shape if not any(x.startswith("adapter.") for x in sets) else model_shape(alt_cfg.model, alt_cfg.adapter)
            alt = next(a for a in stage_plans(alt_cfg, alt_shape, node) if a.stage == s.stage)
            if _fits(alt, node)[0]:
                fixes.append(f"{label} ({fmt_bytes(alt.device_peak_bytes)})")
                if len(fixes) >= 3:
                    break
            elif smallest is None or alt.device_peak_bytes < smallest[0]:
                smallest = (alt.device_peak_bytes, label)
        message = why
        if not fixes:
            if smallest is not None:
                message += (f"; nothing this engine can change fits (smallest: {smallest[1]}, "
                            f"{fmt_bytes(smallest[0])} per process): use nodes with more memory"
                            + (" or GPUs with more memory (one model is never split across GPUs)" if s.device == "cuda" else ""))
            else:
                message += "; use nodes with more memory"
        problems.append(Problem(s.stage, message, fixes))
    return Plan(shape, node, stages, problems)


def _with(cfg: RunConfig, sets: list[str]) -> RunConfig | None:
    """``cfg`` with ``--set`` style overrides, or None when the config rejects them."""
    from ..config.load import apply_override, parse_override

    data = cfg.model_dump(mode="json")
    try:
        for text in sets:
            path, value = parse_override(text)
            apply_override(data, path, value)
        return RunConfig.model_validate(data)
    except Exception:  # noqa: BLE001 - a variant the config rejects is no fix
        return None
