"""SSiam / TSiam head: one shared-weight MLP D -> FC 512 -> ReLU -> FC 2 (methods.md 4.4).

No batch norm, no dropout; every linear layer He-initialised (W ~ N(0, 2 / fan_in), bias 0),
as MatConvNet's ``initParams``. The 2-d output feeds only the contrastive loss; the clustering
features are the 512-d output of the first layer *before* the ReLU: per frame L2-normalised,
per track the mean over its frames, then L2-normalised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SiameseMLP(nn.Module):
    """(B, D) -> (B, out_dim); both branches of a pair go through this one module."""

    def __init__(self, in_dim: int, hidden: int = 512, out_dim: int = 2):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_dim, hidden), nn.Linear(hidden, out_dim)
        for layer in (self.fc1, self.fc2):
            nn.init.normal_(layer.weight, std=(2.0 / layer.in_features) ** 0.5)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, hidden) first-layer output before the ReLU (``x1`` in the reference)."""
        return self.fc1(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Frame-level clustering features: L2-normalised :meth:`features`."""
        return F.normalize(self.features(x), dim=1)

    def embed_tracks(self, x: torch.Tensor, track: torch.Tensor, n_tracks: int | None = None
                     ) -> torch.Tensor:
        """Track-level features: (N, D) frames with (N,) track index in [0, T) -> (T, hidden),
        the mean of :meth:`features` over each track's frames, L2-normalised. O(N hidden)."""
        h = self.features(x)
        t = int(track.max()) + 1 if n_tracks is None else n_tracks
        sums = torch.zeros(t, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, track, h)
        counts = torch.bincount(track, minlength=t).clamp(min=1).to(h.dtype)
        return F.normalize(sums / counts[:, None], dim=1)


def batch_loss(model: nn.Module, loss: nn.Module, batch: dict) -> torch.Tensor:
    """batch: ``first`` (P, D) and ``second`` (P, D) features of the pairs, ``similar`` (P,) 1/0.
    One pass of the shared MLP over both sides."""
    first, second = batch["first"], batch["second"]
    out = model(torch.cat([first, second]))
    p = first.shape[0]
    return loss(out[:p], out[p:], batch["similar"])
