"""The surrogate's regularisation, following the fine-tuning it predicts.

Fine-tuning for ``epochs`` over N samples with batch size B and learning rate η takes
T = epochs·N/B steps; early-stopped gradient descent behaves like ridge regression with
strength 1/(2ηT) on the *mean* loss (the standard early-stopping ↔ ridge correspondence).
So the surrogate fitted on a subset of N samples uses

    λ_S = c · B / (2 · η · epochs · N)        (mean loss; i.e. c·B/(2η·epochs) on the summed loss)

with one dimensionless constant c that absorbs the optimizer (AdamW), the projection and the
feature scale. ``DEFAULT_CONSTANT`` was fitted on the GLUE/SuperGLUE mix with MiniLM + LoRA:
the best fixed λ of the fidelity sweeps was 0.01 at η = 1e-3 and 0.1 at η = 1e-4 (epochs 1,
B 16, subsets of 3 tasks × 300 = 900 training samples), both giving c ≈ 0.0011; the c sweep of
``benchmarks/results/estimation_fidelity_glue_fidelity_minilm_auto.md`` agrees (best 0.0006–0.0013). ``elora calibrate`` refits c from
real fine-tunes of a few subsets and stores it in ``calibration.json`` of the run directory
(and in the user cache, keyed by model + adapter, so later runs of the same model reuse it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ..config import RunConfig

log = logging.getLogger(__name__)

DEFAULT_CONSTANT = 0.0011
CALIBRATION_FILE = "calibration.json"


def regularisation(constant: float, n_samples: int, lr: float, epochs: float, batch_size: int) -> float:
    """λ on the mean loss for a subset of ``n_samples`` training samples."""
    if n_samples < 1:
        raise ValueError("a subset needs at least one training sample")
    return constant * batch_size / (2.0 * lr * epochs * n_samples)


def cache_key(cfg: RunConfig) -> str:
    """Model + adapter (+ projection dim) identify a calibration; training settings do not (λ follows them)."""
    part = {"model": cfg.model.model_dump(mode="json"), "adapter": cfg.adapter.model_dump(mode="json"),
            "dim": cfg.featurize.dim, "probe": [cfg.featurize.probe, cfg.featurize.probe_l2]}
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]


def user_cache_dir() -> Path:
    return Path(os.environ.get("ELORA_CACHE") or Path.home() / ".cache" / "elora_ray") / "calibration"


def calibration_constant(cfg: RunConfig, run_dir: Path | None = None) -> tuple[float, str]:
    """(c, where it came from): ``estimate.calibration`` if set, else the run's calibration.json, else the
    user cache for this model/adapter, else the default."""
    if cfg.estimate.calibration is not None:
        return float(cfg.estimate.calibration), "config (estimate.calibration)"
    key = cache_key(cfg)
    candidates = []
    if run_dir is not None:
        candidates.append(Path(run_dir) / CALIBRATION_FILE)
    candidates.append(user_cache_dir() / f"{key}.json")
    for path in candidates:
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                log.warning("calibration: ignoring unreadable %s", path)
                continue
            if data.get("key") == key and isinstance(data.get("constant"), (int, float)):
                return float(data["constant"]), str(path)
    return DEFAULT_CONSTANT, "default"


def keep_in_run(cfg: RunConfig, run_dir: Path, source: str) -> None:
    """Copy a calibration found in the user cache into the run directory, so the run is self-contained:
    later stages, resumes and other processes (maybe with another cache) read the same constant."""
    from ..io import write_json

    cached = user_cache_dir() / f"{cache_key(cfg)}.json"
    if source == str(cached) and Path(run_dir).is_dir():
        write_json(Path(run_dir) / CALIBRATION_FILE, {**json.loads(cached.read_text()), "copied_from": source})


#: Constants c tried by ``elora calibrate`` (log-spaced; the best one is kept).
CALIBRATION_GRID = tuple(float(f"{10 ** (e / 4):.3g}") for e in range(-24, 1))


def calibrate(cfg: RunConfig, run_dir: Path, num_subsets: int = 6, progress: bool = True) -> dict:
    """Fit the constant c of ``l2: auto`` from real fine-tunes of ``num_subsets`` task subsets.

    The subsets are fine-tuned with the *train* settings (lr, epochs, batch size: the fine-tuning the
    estimate predicts), by the fidelity machinery (one Ray task each, cached under ``calibrate/real``);
    c is the grid value with the smallest mean relative error of the validation loss. Writes
    ``calibration.json`` in the run directory and in the user cache (keyed by model + adapter).
    """
    import pandas as pd

    from ..io import write_json
    from .fidelity import run_fidelity

    t = cfg.train
    fid = cfg.fidelity.model_copy(update={"lr": t.lr, "epochs": t.epochs, "batch_size": t.batch_size,
                                          "num_subsets": num_subsets})
    summary = run_fidelity(cfg.model_copy(update={"fidelity": fid}), run_dir, progress, out_name="calibrate",
                           constants=list(CALIBRATION_GRID))
    by_c = summary["by_calibration_constant"]
    best = min(by_c, key=lambda k: by_c[k]["relative_error"])
    table = pd.read_parquet(Path(run_dir) / "calibrate" / "results.parquet")
    acc = table[f"est_accuracy@{best}"]
    data = {
        "key": cache_key(cfg),
        "constant": float(best.split("=", 1)[1]),
        "loss_relative_error": by_c[best]["relative_error"],
        "no_change_loss_relative_error": summary["no_change_baseline_relative_error"],
        "accuracy_relative_error": float(((acc - table["true_accuracy"]).abs() / table["true_accuracy"].clip(lower=1e-9)).mean()),
        "no_change_accuracy_relative_error": summary["no_change_baseline_accuracy_relative_error"],
        "spearman": by_c[best]["spearman"],
        "subsets": summary["subsets"], "subset_size": summary["subset_size"],
        "fine_tuning": {"lr": t.lr, "epochs": t.epochs, "batch_size": t.batch_size},
        "relative_error_by_constant": {k.split("=", 1)[1]: v["relative_error"] for k, v in by_c.items()},
        "model": cfg.model.name_or_path, "adapter": cfg.adapter.type,
    }
    write_json(Path(run_dir) / CALIBRATION_FILE, data)
    try:
        write_json(user_cache_dir() / f"{data['key']}.json", data)
    except OSError as exc:  # a read-only home must not fail the command
        log.warning("calibration: could not write the user cache (%s); the run's calibration.json is kept", exc)
    log.info("calibration: c = %g (loss relative error %.1f%%, no change %.1f%%; accuracy %.1f%%, no change %.1f%%)",
             data["constant"], 100 * data["loss_relative_error"], 100 * data["no_change_loss_relative_error"],
             100 * data["accuracy_relative_error"], 100 * data["no_change_accuracy_relative_error"])
    return data


def render_calibration(data: dict) -> str:
    return "\n".join([
        f"calibration constant c = {data['constant']:g} (model {data['model']}, adapter {data['adapter']}; "
        f"{data['subsets']} subsets of {data['subset_size']} tasks fine-tuned at lr {data['fine_tuning']['lr']:g}, "
        f"{data['fine_tuning']['epochs']:g} epoch(s), batch {data['fine_tuning']['batch_size']})",
        f"  validation loss relative error {100 * data['loss_relative_error']:.2f}% "
        f"(predicting no change: {100 * data['no_change_loss_relative_error']:.2f}%)",
        f"  accuracy relative error {100 * data['accuracy_relative_error']:.2f}% "
        f"(predicting no change: {100 * data['no_change_accuracy_relative_error']:.2f}%)",
        f"  Spearman {data['spearman']:.3f}",
    ]) + "\n"


def resolve_l2(rule: float | dict, n_samples: int) -> float:
    """The mean-loss λ for ``n_samples`` from a fixed λ or an ``l2: auto`` rule dict
    (``constant``, ``lr``, ``epochs``, ``batch_size``), as the estimate stage passes it to solvers."""
    if isinstance(rule, dict):
        return regularisation(rule["constant"], n_samples, rule["lr"], rule["epochs"], rule["batch_size"])
    return float(rule)


#: The federated setting keeps the fixed λ it was benchmarked with until it gets its own calibration
#: (issue 18): ``estimate.l2: auto`` means this there.
FEDERATED_AUTO_L2 = 1e-3
