"""The surrogate's regularisation, following the fine-tuning it predicts.

Fine-tuning for ``epochs`` over N samples with batch size B and learning rate η takes
T = epochs·N/B steps; early-stopped gradient descent behaves like ridge regression with
strength 1/(2ηT) on the *mean* loss (the standard early-stopping ↔ ridge correspondence).
So the surrogate fitted on a subset of N samples uses

    λ_S = c · B / (2 · η · epochs · N)        (mean loss; i.e. c·B/(2η·epochs) on the summed loss)

with one dimensionless constant c that absorbs the optimizer (AdamW), the projection and the
feature scale. ``DEFAULT_CONSTANT`` (adapter features) was fitted on the GLUE/SuperGLUE mix with MiniLM + LoRA:
the best fixed λ of the fidelity sweeps was 0.01 at η = 1e-3 and 0.1 at η = 1e-4 (epochs 1,
B 16, subsets of 3 tasks × 300 = 900 training samples), both giving c ≈ 0.0011; the c sweep of
``benchmarks/results/estimation_fidelity_glue_fidelity_minilm_auto.md`` agrees (best 0.0006–0.0013). ``elora calibrate`` refits c from
real fine-tunes of a few subsets and stores it in ``calibration.json`` of the run directory
(and in the user cache, keyed by model + adapter, so later runs of the same model reuse it).

The same fine-tunes fit the second number of the estimate, the *margin noise* σ: the estimated
accuracy of a task is the expected accuracy mean Φ(ĥ/σ) when the first-order margin ĥ carries
Gaussian error σ (see :func:`.surrogate.evaluate`), not the share of ĥ > 0, which counts a sample
just past the boundary as a sure hit. ``DEFAULT_MARGIN_NOISE`` was chosen on the fine-tunes c was
chosen on and checked on a held-out seed (``benchmarks/results/estimation_fidelity_glue_fidelity_minilm_*``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..models.precision import model_fingerprint
from ..config import RunConfig
from ..io import fingerprint
from ..layout import RunLayout

log = logging.getLogger(__name__)

DEFAULT_CONSTANT = 0.0011
#: The default constant for each feature space (``featurize.gradient`` resolved). ``full_rank``: the
#: same GLUE/SuperGLUE fine-tunes scored on update-matrix features (best c 0.0003–0.0006, 2-fold CV
#: of the ridge constant 2.84%: ``benchmarks/results/fidelity_surrogates_full_rank.md``).
DEFAULT_CONSTANTS = {"adapter": DEFAULT_CONSTANT, "full_rank": 0.0004}


#: σ of :func:`margin_noise` (log-odds) for each feature space. Chosen on the 10 subsets × 2 seeds of
#: ``estimation_fidelity_glue_fidelity_minilm_auto`` (grid 0.1–0.4: 0.15 best for both feature spaces;
#: accuracy relative error 4.77% → 4.31% for full_rank), checked on the held-out seed of
#: ``…_heldout`` (4.67% → 2.97%; adapter features 3.38% → 2.67%).
DEFAULT_MARGIN_NOISE = {"adapter": 0.15, "full_rank": 0.15}
#: σ tried by ``elora calibrate`` (0: the share of ĥ > 0).
MARGIN_NOISE_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


def default_constant(cfg: RunConfig) -> float:
    return DEFAULT_CONSTANTS[cfg.feature_gradient()]


def regularisation(constant: float, n_samples: int, lr: float, epochs: float, batch_size: int) -> float:
    """λ on the mean loss for a subset of ``n_samples`` training samples."""
    if n_samples < 1:
        raise ValueError("a subset needs at least one training sample")
    return constant * batch_size / (2.0 * lr * epochs * n_samples)


def cache_key(cfg: RunConfig) -> str:
    """Model + adapter (+ projection dim) identify a calibration; training settings do not (λ follows them)."""
    part = {"model": model_fingerprint(cfg.model), "adapter": cfg.adapter.model_dump(mode="json"),
            "dim": cfg.featurize.dim, "probe": [cfg.featurize.probe, cfg.featurize.probe_l2]}
    if cfg.feature_gradient() != "adapter":  # another feature space, another constant (older keys unchanged)
        part["gradient"] = cfg.feature_gradient()
    return fingerprint(part)


def user_cache_dir() -> Path:
    return Path(os.environ.get("ELORA_CACHE") or Path.home() / ".cache" / "elora_ray") / "calibration"


def _stored_calibration(cfg: RunConfig, run_dir: Path | None) -> tuple[dict, str] | None:
    """(calibration.json contents, path) for this model/adapter: the run's, else the user cache's."""
    key = cache_key(cfg)
    candidates = []
    if run_dir is not None:
        candidates.append(RunLayout(run_dir).calibration)
    candidates.append(user_cache_dir() / f"{key}.json")
    for path in candidates:
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                log.warning("calibration: ignoring unreadable %s", path)
                continue
            if data.get("key") == key and isinstance(data.get("constant"), (int, float)):
                return data, str(path)
    return None


def calibration_constant(cfg: RunConfig, run_dir: Path | None = None) -> tuple[float, str]:
    """(c, where it came from): ``estimate.calibration`` if set, else the run's calibration.json, else the
    user cache for this model/adapter, else the default."""
    if cfg.estimate.calibration is not None:
        return float(cfg.estimate.calibration), "config (estimate.calibration)"
    stored = _stored_calibration(cfg, run_dir)
    if stored is not None:
        return float(stored[0]["constant"]), stored[1]
    return default_constant(cfg), "default"


def margin_noise(cfg: RunConfig, run_dir: Path | None = None) -> tuple[float, str]:
    """(σ, where it came from): the run's or the user cache's calibration.json when it holds one
    (``elora calibrate`` fits it), else the default of the feature space."""
    stored = _stored_calibration(cfg, run_dir)
    if stored is not None and "margin_noise" in stored[0]:
        value = stored[0]["margin_noise"]
        if isinstance(value, (int, float)) and value >= 0:
            return float(value), stored[1]
        log.warning("calibration: ignoring margin_noise %r in %s (expected a number ≥ 0); using the default", value, stored[1])
    return DEFAULT_MARGIN_NOISE[cfg.feature_gradient()], "default"


def keep_in_run(cfg: RunConfig, run_dir: Path, source: str) -> None:
    """Copy a calibration found in the user cache into the run directory, so the run is self-contained:
    later stages, resumes and other processes (maybe with another cache) read the same constant."""
    from ..io import write_json

    cached = user_cache_dir() / f"{cache_key(cfg)}.json"
    if source == str(cached) and Path(run_dir).is_dir():
        write_json(RunLayout(run_dir).calibration, {**json.loads(cached.read_text()), "copied_from": source})


#: Constants c tried by ``elora calibrate`` (log-spaced; the best one is kept).
CALIBRATION_GRID = tuple(float(f"{10 ** (e / 4):.3g}") for e in range(-24, 1))


def resolve_l2(rule: float | dict, n_samples: int) -> float:
    """The mean-loss λ for ``n_samples`` from a fixed λ or an ``l2: auto`` rule dict
    (``constant``, ``lr``, ``epochs``, ``batch_size``), as the estimate stage passes it to solvers."""
    if isinstance(rule, dict):
        return regularisation(rule["constant"], n_samples, rule["lr"], rule["epochs"], rule["batch_size"])
    return float(rule)


#: The federated setting keeps the fixed λ it was benchmarked with until it gets its own calibration
#: (issue 18): ``estimate.l2: auto`` means this there.
FEDERATED_AUTO_L2 = 1e-3
