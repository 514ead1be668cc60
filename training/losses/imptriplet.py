"""Improved triplet loss (ImpTriplet), methods.md section 7 (and reference forms of 2.2).

Paper-consistent form on explicit triplets, inputs ``anchor, positive, negative`` each (T, E):
    L = mean relu(d_ap - d_an + m) + mean relu(d_ap - d_pn + m) + beta * mean relu(d_ap - tau2)
with d the Euclidean distance. The batch-hard reference forms of the re-ID repository
(``batch_hard_triplet``) are exposed to check the test vectors of methods.md 2.3.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses.base import BaseLoss


def euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise distance of (T, E) and (T, E) -> (T,), as sqrt(clamp(., 1e-12)) (2.2)."""
    return ((a - b) ** 2).sum(dim=1).clamp(min=1e-12).sqrt()


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """(N, E) -> (N, N), sqrt(clamp(|x|^2 + |y|^2 - 2 x.y, 1e-12)) as in the reference."""
    sq = (x * x).sum(dim=1)
    return (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp(min=1e-12).sqrt()


def batch_hard_triplet(x: torch.Tensor, labels: torch.Tensor, margin: float | None = 0.3,
                       variant: str = "triplet", normalize: bool = False) -> torch.Tensor:
    """Reference batch-hard forms (methods.md 2.2) on (N, E) features and (N,) labels.

    variant: ``triplet`` (plain), ``imptriplet`` (repo ImpTripletLoss: second term d_np - d_an)
    or ``retriplet`` (second term d_ap - d_np). margin None: soft margin log(1 + exp(-y)).
    The hardest positive includes the anchor itself, as in the reference.
    """
    if normalize:
        x = x / (x.norm(dim=1, keepdim=True) + 1e-12)
    dist = pairwise_euclidean(x)
    same = labels[:, None] == labels[None, :]
    d_ap, p_idx = dist.masked_fill(~same, float("-inf")).max(dim=1)
    d_an, n_idx = dist.masked_fill(same, float("inf")).min(dim=1)
    d_np = dist[p_idx, n_idx]

    def rank(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:  # wants x1 > x2
        if margin is None:
            return F.softplus(-(x1 - x2)).mean()
        return F.relu(x2 - x1 + margin).mean()

    loss = rank(d_an, d_ap)
    if variant == "imptriplet":
        loss = loss + rank(d_an, d_np)
    elif variant == "retriplet":
        loss = loss + rank(d_np, d_ap)
    elif variant != "triplet":
        raise ValueError(f"unknown variant {variant!r}")
    return loss


def cheng_triplet(d_ap: torch.Tensor, d_an: torch.Tensor, tau1: float = -1.0, tau2: float = 0.01,
                  beta: float = 0.002) -> torch.Tensor:
    """Cheng et al. form mean[max(d_ap - d_an, tau1) + beta max(d_ap, tau2)] (methods.md 2.1)."""
    return (torch.clamp(d_ap - d_an, min=tau1) + beta * torch.clamp(d_ap, min=tau2)).mean()


class ImpTripletLoss(BaseLoss):
    """Paper-consistent improved triplet loss on explicit triplets (methods.md 7).

    Args:
        margin: m of both ranking terms (default 0.3, the reference repo's margin).
        beta: weight of the intra-class term pulling d_ap under tau2.
        tau2: the intra-class margin.
    """

    input_ndims = (2, 2, 2)

    def __init__(self, margin: float = 0.3, beta: float = 0.002, tau2: float = 0.01):
        super().__init__()
        self.margin, self.beta, self.tau2 = margin, beta, tau2

    def compute(self, anchor, positive, negative) -> dict[str, torch.Tensor]:
        if not (anchor.shape == positive.shape == negative.shape):
            raise ValueError("anchor, positive and negative must have the same shape (T, E)")
        d_ap = euclidean(anchor, positive)
        d_an = euclidean(anchor, negative)
        d_pn = euclidean(positive, negative)
        return {
            "anchor_neg": F.relu(d_ap - d_an + self.margin).mean(),
            "pos_neg": F.relu(d_ap - d_pn + self.margin).mean(),
            "intra": self.beta * F.relu(d_ap - self.tau2).mean(),
        }
