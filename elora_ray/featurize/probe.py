"""Linear probe: fit each encoder task head on frozen pooled features before linearising.

A freshly initialised head makes h(s, y) noise, and so its gradients. The probe is a
multinomial logistic regression (scikit-learn, L2, on standardised features) per task; the
standardisation is folded back into the head's weight and bias.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def fit_probe(
    features: np.ndarray, label_ids: np.ndarray, num_labels: int, c: float | str = "auto", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Weight [num_labels, hidden] and bias [num_labels] of a probe on ``features``.

    ``c="auto"`` picks the inverse L2 strength from ``C_GRID`` by 3-fold cross-validated log
    loss: a probe that interpolates its training data leaves the linearised fine-tuning
    nothing to fit (training loss ≈ 0 at θ*), one that is too weak makes h uninformative.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(label_ids, dtype=np.int64)
    mu = x.mean(0)
    sd = x.std(0) + 1e-6
    z = (x - mu) / sd
    present = np.unique(y)
    weight = np.zeros((num_labels, x.shape[1]))
    bias = np.zeros(num_labels)
    if len(present) < 2:
        # One class only: make it certain-ish without looking at the text.
        bias[present[0]] = 4.0
        return weight.astype(np.float32), bias.astype(np.float32), {"train_accuracy": 1.0, "classes_seen": 1}
    folds = int(min(3, np.bincount(y)[present].min()))
    chosen_c = select_c(z, y, folds, seed) if c == "auto" else float(c)
    clf = LogisticRegression(C=chosen_c, max_iter=2000, random_state=seed)
    clf.fit(z, y)
    coef, icpt = clf.coef_, clf.intercept_
    if len(present) == 2 and coef.shape[0] == 1:  # binary: sklearn returns one row for class present[1]
        coef = np.stack([-coef[0] / 2, coef[0] / 2])
        icpt = np.array([-icpt[0] / 2, icpt[0] / 2])
    for row, cls in enumerate(clf.classes_):
        weight[cls] = coef[row] / sd
        bias[cls] = icpt[row] - (coef[row] / sd) @ mu
    # Classes never seen in the probe data stay at a low score.
    for cls in set(range(num_labels)) - set(present.tolist()):
        bias[cls] = -10.0
    acc = float((clf.predict(z) == y).mean())
    return weight.astype(np.float32), bias.astype(np.float32), {
        "train_accuracy": acc, "classes_seen": int(len(present)), "C": chosen_c,
    }


def select_c(z: np.ndarray, y: np.ndarray, folds: int, seed: int) -> float:
    """The C in ``C_GRID`` with the lowest cross-validated log loss (1.0 if CV is impossible)."""
    if folds < 2:
        return 1.0
    labels = np.unique(y)
    best, best_loss = 1.0, np.inf
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(z, y))
    for c in C_GRID:
        losses = []
        for tr, te in splits:
            clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(z[tr], y[tr])
            losses.append(log_loss(y[te], clf.predict_proba(z[te]), labels=labels))
        if np.mean(losses) < best_loss - 1e-9:
            best, best_loss = c, float(np.mean(losses))
    return best


def heads_state(weights: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Tensors named like the classifier's ``heads`` ModuleList state dict."""
    out: dict[str, torch.Tensor] = {}
    for i, (w, b) in enumerate(weights):
        out[f"{i}.weight"] = torch.from_numpy(np.ascontiguousarray(w))
        out[f"{i}.bias"] = torch.from_numpy(np.ascontiguousarray(b))
    return out
