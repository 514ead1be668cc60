"""Building blocks shared by the heads (methods.md section 0)."""
from __future__ import annotations

from torch import nn


def fc(in_dim: int, out_dim: int) -> nn.Sequential:
    """FC = fully connected + ReLU + batch norm (Multi-Face heads)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.BatchNorm1d(out_dim))


def tower(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    """in_dim -> FC hidden -> dropout -> FC out_dim."""
    return nn.Sequential(fc(in_dim, hidden), nn.Dropout(dropout), fc(hidden, out_dim))
