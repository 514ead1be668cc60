"""ImpTriplet head: one shared-weight tower D -> FC 1024 -> DO 0.2 -> FC 512 (methods.md 0)."""
from __future__ import annotations

import torch
from torch import nn

from training.heads.common import tower


class ImpTripletHead(nn.Module):
    """(B, D) -> (B, out_dim); ``embed`` is the same map."""

    def __init__(self, in_dim: int, hidden: int = 1024, out_dim: int = 512, dropout: float = 0.2):
        super().__init__()
        self.tower = tower(in_dim, hidden, out_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower(x)

    embed = forward


def batch_loss(model: nn.Module, loss: nn.Module, batch: dict) -> torch.Tensor:
    """batch: ``views`` (B, 3, D) anchor/p1/p2 tracklets, ``negative`` (B, D) the hard negative's
    anchor tracklet. Triplets (a, p1, n) and (a, p2, n), one tower pass over all 4B inputs."""
    views, neg = batch["views"], batch["negative"]
    b = views.shape[0]
    out = model(torch.cat([views.transpose(0, 1).reshape(-1, views.shape[-1]), neg]))
    a, p1, p2, n = out[:b], out[b:2 * b], out[2 * b:3 * b], out[3 * b:]
    return loss(torch.cat([a, a]), torch.cat([p1, p2]), torch.cat([n, n]))
