"""``elora calibrate``: fit the surrogate's constant c from real fine-tunes of a few task subsets.

The rule itself (λ = c·B / (2·η·epochs·N)), the cache and the lookup order live in
:mod:`elora_ray.estimate.calibration`; this module runs the fine-tunes (through the fidelity
machinery) and writes ``calibration.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import RunConfig
from ..io import write_json
from ..layout import RunLayout
from .calibration import CALIBRATION_GRID, cache_key, user_cache_dir
from .fidelity import run_fidelity

log = logging.getLogger(__name__)


def calibrate(cfg: RunConfig, run_dir: Path, num_subsets: int = 6, progress: bool = True) -> dict:
    """Fit the constant c of ``l2: auto`` from real fine-tunes of ``num_subsets`` task subsets.

    The subsets are fine-tuned with the *train* settings (lr, epochs, batch size: the fine-tuning the
    estimate predicts), by the fidelity machinery (one Ray task each, cached under ``calibrate/real``);
    c is the grid value with the smallest mean relative error of the validation loss; at that c, the
    margin noise σ of the accuracy estimate is the grid value with the smallest accuracy relative error
    (ties: the smaller σ). Writes
    ``calibration.json`` in the run directory and in the user cache (keyed by model + adapter).
    """

    t = cfg.train
    fid = cfg.fidelity.model_copy(update={"lr": t.lr, "epochs": t.epochs, "batch_size": t.batch_size,
                                          "num_subsets": num_subsets})
    summary = run_fidelity(cfg.model_copy(update={"fidelity": fid}), run_dir, progress, out_name="calibrate",
                           constants=list(CALIBRATION_GRID))
    by_c = summary["by_calibration_constant"]
    best = min(by_c, key=lambda k: by_c[k]["relative_error"])
    by_sigma = by_c[best]["accuracy_relative_error_by_margin_noise"]
    sigma = min(by_sigma, key=lambda k: (round(by_sigma[k], 12), float(k)))
    data = {
        "key": cache_key(cfg),
        "constant": float(best.split("=", 1)[1]),
        "loss_relative_error": by_c[best]["relative_error"],
        "no_change_loss_relative_error": summary["no_change_baseline_relative_error"],
        "margin_noise": float(sigma),
        "accuracy_relative_error": by_sigma[sigma],
        "accuracy_relative_error_by_margin_noise": by_sigma,
        "no_change_accuracy_relative_error": summary["no_change_baseline_accuracy_relative_error"],
        "spearman": by_c[best]["spearman"],
        "subsets": summary["subsets"], "subset_size": summary["subset_size"],
        "fine_tuning": {"lr": t.lr, "epochs": t.epochs, "batch_size": t.batch_size},
        "relative_error_by_constant": {k.split("=", 1)[1]: v["relative_error"] for k, v in by_c.items()},
        "model": cfg.model.name_or_path, "adapter": cfg.adapter.type,
    }
    write_json(RunLayout(run_dir).calibration, data)
    try:
        write_json(user_cache_dir() / f"{data['key']}.json", data)
    except OSError as exc:  # a read-only home must not fail the command
        log.warning("calibration: could not write the user cache (%s); the run's calibration.json is kept", exc)
    log.info("calibration: c = %g, σ = %g (loss relative error %.1f%%, no change %.1f%%; accuracy %.1f%%, no change %.1f%%)",
             data["constant"], data["margin_noise"], 100 * data["loss_relative_error"], 100 * data["no_change_loss_relative_error"],
             100 * data["accuracy_relative_error"], 100 * data["no_change_accuracy_relative_error"])
    return data


def render_calibration(data: dict) -> str:
    return "\n".join([
        f"calibration constant c = {data['constant']:g} (model {data['model']}, adapter {data['adapter']}; "
        f"{data['subsets']} subsets of {data['subset_size']} tasks fine-tuned at lr {data['fine_tuning']['lr']:g}, "
        f"{data['fine_tuning']['epochs']:g} epoch(s), batch {data['fine_tuning']['batch_size']})",
        f"  validation loss relative error {100 * data['loss_relative_error']:.2f}% "
        f"(predicting no change: {100 * data['no_change_loss_relative_error']:.2f}%)",
        f"  accuracy relative error {100 * data['accuracy_relative_error']:.2f}% with margin noise σ = {data.get('margin_noise', 0):g} "
        f"(predicting no change: {100 * data['no_change_accuracy_relative_error']:.2f}%)",
        f"  Spearman {data['spearman']:.3f}",
    ]) + "\n"
