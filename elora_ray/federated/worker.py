"""The client worker: a Ray actor holding the base model once and serving any client on demand.

Every method takes adapter states as arguments (``{name: array}``; pass ``ray.put`` refs to
ship them once) and a client name; the client's windows are looked up in the table the actor
loaded at start. A prediction is a *linear combination of adapters' logits*, given as
``terms = [(coef, state), ...]`` — a single adapter is ``[(1.0, s)]``; a group with a boosting
learner L at step size c is ``[(1, s_g), (c, s_L), (−c, s_θ*)]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow.parquet as pq
import torch

from ..boost.rule import step_coefficient
from ..config import RunConfig
from ..ensemble.weights import fit_task_weights, weights_objective
from ..models.flops import FlopCounter
from ..models.placement import reserved_gpu_ids, worker_device
from ..models.precision import apply_tf32, resolve_precision
from ..train.worker import PeakMemory
from .clients import _evenly
from .model import (
    WindowFeaturizer,
    apply_projected_step,
    build_lm,
    get_state,
    set_state,
    token_losses,
    train_windows,
    window_gold_log_odds,
    window_logits,
    window_targets,
)

Terms = Sequence[tuple[float, dict]]


class ClientWorker:
    def __init__(self, cfg_data: dict, windows_path: str, threads: int = 1) -> None:
        torch.set_num_threads(max(1, int(threads)))
        self.cfg = RunConfig.model_validate(cfg_data)
        # a worker that reserved (a share of) a GPU must see it (federated.gpus_per_worker)
        self.device = worker_device(bool(reserved_gpu_ids()), "a federated client worker")
        # every forward (local steps, evaluation, featurisation, logits) in the training's precision
        self.precision = resolve_precision(self.cfg.compute.precision, self.device)
        apply_tf32(self.cfg.compute.tf32)
        self.peft_model, _ = build_lm(self.cfg, self.device)
        self.theta_star = get_state(self.peft_model)
        table = pq.read_table(windows_path).to_pandas()
        self.data: dict[str, dict[str, tuple[np.ndarray, np.ndarray, list[str]]]] = {}
        every = self.cfg.federated.targets == "all"
        for (client, split), df in table.groupby(["client", "split"], sort=False):
            x = np.stack(df["input_ids"].to_numpy()).astype(np.int64)
            y = window_targets(x, df["target"].to_numpy(np.int64), every)
            self.data.setdefault(client, {})[split] = (x, y, df["sample_id"].tolist())
        self._featurizer: WindowFeaturizer | None = None
        self._units: dict | None = None

    # ------------------------------------------------------------------ helpers
    def _windows(self, client: str, split: str):
        try:
            return self.data[client][split]
        except KeyError:
            raise KeyError(f"client {client!r} has no {split} windows") from None

    def _feature_windows(self, client: str):
        x, y, ids = self._windows(client, "train")
        keep = _evenly(list(range(len(y))), self.cfg.federated.featurize_windows)
        return x[keep], y[keep], [ids[i] for i in keep]

    def _combined_logits(self, x: np.ndarray, terms: Terms) -> torch.Tensor:
        """Σ coef · logits of the windows ``x`` (all at once: keep ``x`` to one batch)."""
        total = None
        for coef, state in terms:
            if coef == 0:
                continue
            set_state(self.peft_model, state)
            z = window_logits(self.peft_model, x, precision=self.precision) * float(coef)
            total = z if total is None else total + z
        if total is None:
            raise ValueError("a prediction needs at least one adapter with a non-zero coefficient")
        return total

    def _batches(self, n: int):
        """Window batches small enough that a batch's logits at every position stay in memory."""
        step = max(1, self.cfg.federated.batch_size * 2)
        return [slice(i, i + step) for i in range(0, n, step)]

    def _combined_losses(self, x: np.ndarray, y: np.ndarray, terms: Terms) -> np.ndarray:
        """Per-window mean loss of the combined prediction, computed batch by batch."""
        return np.concatenate([token_losses(self._combined_logits(x[b], terms), y[b]) for b in self._batches(len(y))]
                              or [np.zeros(0)])

    def _gather(self, clients: Sequence[str], split: str, features: bool = False, skip_missing: bool = False):
        xs, ys, ids, owner = [], [], [], []
        for c in clients:
            if skip_missing and not features and split not in self.data.get(c, {}):
                continue
            x, y, i = self._feature_windows(c) if features else self._windows(c, split)
            xs.append(x)
            ys.append(y)
            ids.extend(i)
            owner.extend([c] * len(y))
        if not xs:
            raise KeyError(f"none of the {len(clients)} clients has {split} windows")
        return np.concatenate(xs), np.concatenate(ys), ids, owner

    # ------------------------------------------------------------------ calls
    def info(self) -> dict:
        """θ*, adapter size and per-window FLOPs (train step, forward, featurisation), measured once."""
        if self._units is None:
            client = next(iter(self.data))
            x, y, _ = self._windows(client, "train")
            b = min(len(y), self.cfg.federated.batch_size)
            set_state(self.peft_model, self.theta_star)
            with FlopCounter(self.peft_model) as fc:
                train_windows(self.peft_model, x[:b], y[:b], epochs=b / max(1, b), lr=0.0, batch_size=b, seed=0,
                              precision=self.precision)
            train = fc.total / b
            with FlopCounter(self.peft_model) as fc:
                window_logits(self.peft_model, x[:b], precision=self.precision)
            fwd = fc.total / b
            set_state(self.peft_model, self.theta_star)
            feat = self.featurizer()
            with FlopCounter(self.peft_model) as fc:
                feat(x[:b], y[:b])
            self._units = {"train": train, "forward": fwd, "featurize": fc.total / b}
        return {
            "theta_star": self.theta_star,
            "adapter_parameters": int(sum(v.size for v in self.theta_star.values())),
            "flops_per_window": dict(self._units),
            "gradient_parameters": self.featurizer().p,
        }

    def featurizer(self) -> WindowFeaturizer:
        if self._featurizer is None:
            set_state(self.peft_model, self.theta_star)
            self._featurizer = WindowFeaturizer(self.cfg, self.peft_model)
        return self._featurizer

    def update(self, client: str, state: dict, epochs: float, lr: float, seed: int) -> dict:
        """One client's local training from ``state``; returns the new state and its window count."""
        with PeakMemory() as mem:
            x, y, _ = self._windows(client, "train")
            set_state(self.peft_model, state)
            stats = train_windows(self.peft_model, x, y, epochs=epochs, lr=lr, batch_size=self.cfg.federated.batch_size,
                                  seed=seed, precision=self.precision)
            new = get_state(self.peft_model)
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"client {client}: training loss is {stats['loss']}")
        return {"state": new, "n": len(y), "loss": stats["loss"], "trained_windows": stats["windows"],
                "peak_rss_mb": mem.megabytes()["peak_rss_mb"]}

    def evaluate(self, clients: Sequence[str], split: str, terms: Terms) -> dict:
        """Per-client mean next-token loss (and window count) of the combined prediction."""
        with PeakMemory() as mem:
            x, y, _, owner = self._gather(clients, split)
            losses = self._combined_losses(x, y, terms)
        out: dict[str, list[float]] = {}
        for c, v in zip(owner, losses):
            out.setdefault(c, []).append(float(v))
        return {"per_client": {c: (float(np.mean(v)), len(v)) for c, v in out.items()}, "windows": len(y),
                "peak_rss_mb": mem.megabytes()["peak_rss_mb"]}

    def finetune_evaluate(self, client: str, state: dict, epochs: float, lr: float, seed: int) -> dict:
        """MTL-FT: fine-tune ``state`` on the client's train windows, then its test loss."""
        with PeakMemory() as mem:
            upd = self.update(client, state, epochs, lr, seed)
            x, y, _ = self._windows(client, "test")
            loss = self._combined_losses(x, y, [(1.0, upd["state"])])
        return {"loss": float(loss.mean()), "n": len(y), "trained_windows": upd["trained_windows"],
                "peak_rss_mb": mem.megabytes()["peak_rss_mb"]}

    def featurize(self, clients: Sequence[str]) -> dict:
        """Projected gradients g̃ and offsets h0 at θ* of each client's featurisation (train) windows
        and of its validation windows (held out: what the paper's f_i(S) scores)."""
        feat = self.featurizer()
        set_state(self.peft_model, self.theta_star)
        out = {}
        n = 0
        with PeakMemory() as mem:
            for c in clients:
                x, y, ids = self._feature_windows(c)
                g, h = feat(x, y)
                out[c] = {"sample_id": ids, "g": g.astype(np.float32), "h0": h.astype(np.float32)}
                if "validation" in self.data[c]:
                    xv, yv, idv = self._windows(c, "validation")
                    gv, hv = feat(xv, yv)
                    out[c]["validation"] = {"sample_id": idv, "g": gv.astype(np.float32), "h0": hv.astype(np.float32)}
                n += len(ids) + len(out[c].get("validation", {}).get("sample_id", []))
        return {"features": out, "windows": n, "peak_rss_mb": mem.megabytes()["peak_rss_mb"]}

    def gold_log_odds(self, clients: Sequence[str], terms: Terms) -> dict:
        """(sample ids, h, loss) of the combined prediction on the featurisation windows of
        ``clients``: each window's mean gold log-odds and mean next-token loss over its targets."""
        x, y, ids, _ = self._gather(clients, "train", features=True)
        hs, losses = [], []
        for b in self._batches(len(y)):
            z = self._combined_logits(x[b], terms)
            hs.append(window_gold_log_odds(z, torch.as_tensor(y[b]).to(z.device)).cpu().numpy())
            losses.append(token_losses(z, y[b]))
        return {"sample_id": ids, "h": np.concatenate(hs), "loss": np.concatenate(losses), "windows": len(ids)}

    def line_search(self, clients: Sequence[str], base: Terms, delta: Terms) -> dict:
        """The boosting rule's ρ (:func:`elora_ray.boost.rule.step_coefficient`) for ``base + ρ·delta``,
        on the mean next-token loss at ≤ ``federated.weight_positions`` seeded targets of the
        featurisation windows."""
        x, y, _, _ = self._gather(clients, "train", features=True)
        z, yt, forwarded = self._member_logits_sample(x, y, [base, delta])
        zb, zd = z[:, 0].float(), z[:, 1].float()

        def loss(rho: float) -> float:
            return float(torch.nn.functional.cross_entropy(zb + float(rho) * zd, yt))

        rho, coef = step_coefficient(self.cfg.boost, loss)
        return {"rho": rho, "coef": coef, "loss_before": loss(0.0), "loss_after": loss(coef),
                "loss_full_step": loss(rho), "windows": forwarded, "targets": len(yt)}

    def learner_state(self, w: np.ndarray) -> dict:
        """The linearised boosting learner θ* + P w, as an adapter state."""
        feat = self.featurizer()
        set_state(self.peft_model, self.theta_star)
        apply_projected_step(feat, w)
        state = get_state(self.peft_model)
        set_state(self.peft_model, self.theta_star)
        return state

    def fit_weights(self, clients: Sequence[str], members: Sequence[Terms], own: int | None) -> dict:
        """Combination weights α over ``members`` for these clients: the main pipeline's
        :func:`elora_ray.ensemble.weights.fit_task_weights` (same objective, ``ensemble.shrink``
        towards member ``own``, ``ensemble.solver``) on ≤ ``federated.weight_positions`` seeded
        targets of the clients' validation windows."""
        x, y, _, _ = self._gather(clients, "validation", skip_missing=True)  # short clients may have none
        z, yt, forwarded = self._member_logits_sample(x, y, members)  # [P, M, V] float16
        e = self.cfg.ensemble
        alpha = fit_task_weights(z, yt, own, e.shrink, e.solver)
        val = weights_objective(z, yt, alpha)
        own_losses = [weights_objective(z, yt, np.eye(len(members))[j]) for j in range(len(members))]
        return {"alpha": alpha.astype(float).tolist(), "val_loss": val, "member_val_loss": own_losses,
                "windows": forwarded, "targets": len(yt)}

    def _member_logits_sample(self, x: np.ndarray, y: np.ndarray, members: Sequence[Terms]
                              ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Each member's logits at ≤ ``federated.weight_positions`` seeded (window, position) targets.

        Returns ``(z [P, M, V] float16, targets [P], windows forwarded)``: the combination weights
        and the line search need every member's full-vocabulary logits, so they are kept only at a
        sample of the targets."""
        per_window = 1 if y.ndim == 1 else y.shape[1]
        total = len(y) * per_window
        cap = self.cfg.federated.weight_positions
        rng = np.random.default_rng(self.cfg.seed)
        pick = np.sort(rng.choice(total, size=min(cap, total), replace=False))
        windows = np.unique(pick // per_window)
        z = []
        for t in members:
            parts = []
            for b in self._batches(len(windows)):
                w = windows[b]
                logits = self._combined_logits(x[w], t)
                flat = logits.reshape(-1, logits.shape[-1])
                mine = pick[np.isin(pick // per_window, w)]  # the picked targets of these windows, in order
                local = np.searchsorted(w, mine // per_window) * per_window + mine % per_window
                parts.append(flat[torch.as_tensor(local).to(flat.device)].half().cpu())
            z.append(torch.cat(parts))
        targets = torch.as_tensor(y.reshape(-1)[pick])
        return torch.stack(z, dim=1), targets, len(windows)

    def fit_subsets(self, chunk, feats: dict, names: list[str], l2: float, max_iter: int = 200,
                    halves: dict | None = None) -> dict:
        """Subset regressions of the affinity estimate (run here so they share the pool's CPUs)."""
        from .affinity import fit_subsets

        rows, gains = fit_subsets(chunk, feats, names, l2, max_iter, halves=halves)
        return {"rows": rows, "gains": gains}
