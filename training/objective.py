"""A head's model and loss as one module (:class:`Objective`): what training steps, what a
checkpoint holds, what DDP wraps (so the loss's own parameters, BCL's radius, are synchronised
too)."""
from __future__ import annotations

import torch
from torch import nn

from training import registry


class Objective(nn.Module):
    """Model + loss as one module, so DDP synchronises the loss's parameters (BCL radius) too."""

    def __init__(self, head: str, in_dim: int, model_kwargs: dict | None = None):
        super().__init__()
        spec = registry.get(head)
        self.head, self.in_dim = head, in_dim
        self.model_kwargs = {**spec.model_kwargs, **(model_kwargs or {})}
        self.model = spec.model(in_dim, **self.model_kwargs)
        self.loss = spec.loss(**spec.loss_kwargs)
        self._batch_loss = spec.batch_loss

    def forward(self, batch: dict) -> torch.Tensor:
        return self._batch_loss(self.model, self.loss, batch)


def unwrap(module: nn.Module) -> Objective:
    return module.module if hasattr(module, "module") else module
