"""MvCorr head: three unshared towers D -> FC 512 -> DO 0.2 -> FC 256 (methods.md 0, 3.2).

Inference (``embed``) uses tower 0, as the reference evaluates one branch.
"""
from __future__ import annotations

import torch
from torch import nn

from training.heads.common import tower


class MvCorrHead(nn.Module):
    """forward: (B, N, D) views -> (B, N, out_dim); embed: (B, D) -> (B, out_dim) via tower 0."""

    def __init__(self, in_dim: int, hidden: int = 512, out_dim: int = 256, dropout: float = 0.2,
                 n_views: int = 3):
        super().__init__()
        self.towers = nn.ModuleList(tower(in_dim, hidden, out_dim, dropout) for _ in range(n_views))

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        if views.shape[1] != len(self.towers):
            raise ValueError(f"expected {len(self.towers)} views, got {views.shape[1]}")
        return torch.stack([t(views[:, v]) for v, t in enumerate(self.towers)], dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.towers[0](x)


def batch_loss(model: nn.Module, loss: nn.Module, batch: dict) -> torch.Tensor:
    """batch: ``views`` (B, 3, D), the three tracklets of each track are the three views."""
    return loss(model(batch["views"]))
