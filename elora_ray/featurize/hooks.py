"""The hook bookkeeping shared by the per-sample feature extractors (one forward + one backward).

Both :class:`~.gradients.PerSampleGradients` (adapter gradients) and
:class:`~.update_sketch.PerSampleUpdateSketch` (update-matrix sketch) need, for each hooked site
and each call of it during the forward pass, the activation entering the site and the gradient
arriving at a module's output after ``Σ_b h_b`` is backpropagated, paired in call order. This
base class keeps both, removes its hooks on exit and backpropagates; subclasses register the
forward hooks and turn the pairs into features.
"""

from __future__ import annotations

import torch


class ForwardBackwardHooks:
    """Context manager keeping, per site key, each call's input and its output's gradient."""

    def __init__(self) -> None:
        self._handles: list = []
        self._inputs: dict[int, list[torch.Tensor]] = {}
        self._grads: dict[int, dict[int, torch.Tensor | None]] = {}

    def _register(self) -> list:
        """Register the forward hooks; return their handles."""
        raise NotImplementedError

    def __enter__(self):
        self._handles.extend(self._register())
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._clear()

    def _clear(self) -> None:
        self._inputs.clear()
        self._grads.clear()

    def _keep_input(self, key: int, x: torch.Tensor) -> None:
        self._inputs.setdefault(key, []).append(x.detach())

    def _keep_output_grad(self, key: int, output: torch.Tensor) -> None:
        """Reserve the next slot of ``key`` and fill it with ``output``'s gradient during backward."""
        slots = self._grads.setdefault(key, {})
        slot = len(slots)
        slots[slot] = None

        def grad_hook(grad: torch.Tensor) -> None:
            slots[slot] = grad.detach()

        output.register_hook(grad_hook)

    def _backward(self, per_sample_output: torch.Tensor) -> int:
        """Backpropagate Σ_b h_b; return the batch size."""
        if per_sample_output.ndim != 1:
            raise ValueError("expected one scalar per sample")
        per_sample_output.sum().backward()
        return per_sample_output.shape[0]

    def _pairs(self, key: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(input, output gradient) of every call of ``key`` whose output received a gradient."""
        grads = self._grads.get(key, {})
        return [(x, g) for slot, x in enumerate(self._inputs.get(key, [])) if (g := grads.get(slot)) is not None]
