"""Shared plumbing of the losses: input validation and device/dtype handling.

Each loss subclasses :class:`BaseLoss` and writes one method, :meth:`compute`, returning a dict
of named scalar components; ``forward`` validates the inputs and returns their sum.
"""
from __future__ import annotations

import torch
from torch import nn


class BaseLoss(nn.Module):
    """Base class: ``forward(*tensors) -> scalar`` = sum of :meth:`compute`'s components."""

    #: expected ``ndim`` of each positional tensor input, in order (None: not checked).
    input_ndims: tuple[int | None, ...] = ()

    def compute(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def validate(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Check ndims, float dtype of the first input and finiteness; move to the loss's device."""
        if len(inputs) < len(self.input_ndims):
            raise ValueError(f"{type(self).__name__} expects {len(self.input_ndims)} inputs")
        device = self._device(inputs[0])
        out = []
        for i, x in enumerate(inputs):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"input {i} is {type(x).__name__}, expected a torch.Tensor")
            want = self.input_ndims[i] if i < len(self.input_ndims) else None
            if want is not None and x.ndim != want:
                raise ValueError(f"input {i} has shape {tuple(x.shape)}, expected {want} dims")
            if x.is_floating_point() and not torch.isfinite(x).all():
                raise ValueError(f"input {i} has non-finite values")
            out.append(x.to(device))
        if not out[0].is_floating_point():
            raise TypeError("embeddings must be floating point")
        if out[0].shape[0] == 0:
            raise ValueError("empty batch")
        return tuple(out)

    def _device(self, x: torch.Tensor) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else x.device

    def components(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named loss terms (already weighted), after validation."""
        return self.compute(*self.validate(*inputs))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self.components(*inputs).values())).sum()
