"""Ball Cluster Learning loss, methods.md 1.4 (and the weak-label mode of section 7).

Inputs: ``x`` (N, E) unit-norm embeddings, ``labels`` (N,) integer cluster ids, and optionally
``allowed`` (N, K) bool over the K sorted unique labels: the clusters that may serve as the
"other centroid" of each sample (weak labels: its cannot-link tracks). Without ``allowed``
every other cluster is a candidate (supervised mode, identical to the reference).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses.base import BaseLoss


class BallClusterLoss(BaseLoss):
    """L = alpha_pos mean relu(d_own - b) + alpha_neg mean relu(9b + eps - min_other d).

    b = softplus(h) with h learnable (``h_bias``, init 0.1). d is the squared Euclidean distance
    to the L2-normalised cluster centroids (not detached). Samples without a candidate other
    centroid (K = 1, or no allowed cluster) contribute no negative term; the negative mean is
    over the samples that have one (0 when none has).
    """

    input_ndims = (2, 1)

    def __init__(self, init_bias: float = 0.1, alpha_pos: float = 4.0, alpha_neg: float = 1.0,
                 eps: float = 0.05):
        super().__init__()
        self.h_bias = torch.nn.Parameter(torch.tensor(float(init_bias)))
        self.alpha_pos, self.alpha_neg, self.eps = alpha_pos, alpha_neg, eps

    @property
    def b(self) -> torch.Tensor:
        """Squared ball radius softplus(h)."""
        return F.softplus(self.h_bias)

    def hac_threshold(self) -> float:
        """Squared-Euclidean HAC stopping distance 4b (methods.md 1.5)."""
        return float(4 * self.b.detach())

    def distances(self, x: torch.Tensor, labels: torch.Tensor):
        """-> (d (N, K) squared distances to centroids, inverse (N,) cluster index of each sample)."""
        _, inverse = torch.unique(labels, sorted=True, return_inverse=True)
        k = int(inverse.max()) + 1
        onehot = F.one_hot(inverse, k).to(x.dtype)                    # (N, K)
        sums = onehot.T @ x                                           # (K, E)
        centroids = sums / sums.norm(dim=1, keepdim=True)             # no eps, as the reference
        d = ((x * x).sum(1, keepdim=True) + (centroids * centroids).sum(1)[None, :]
             - 2 * x @ centroids.T).clamp(min=0)                    # (N, K), no (N, K, E) tensor
        return d, inverse

    def compute(self, x, labels, allowed=None) -> dict[str, torch.Tensor]:
        if labels.shape != (x.shape[0],) or labels.is_floating_point():
            raise ValueError("labels must be an integer tensor of shape (N,)")
        d, inverse = self.distances(x, labels)
        b = self.b.to(x.dtype)
        own = inverse[:, None] == torch.arange(d.shape[1], device=d.device)[None, :]
        d_pos = d.gather(1, inverse[:, None]).squeeze(1)
        candidates = ~own
        if allowed is not None:
            if allowed.shape != d.shape or allowed.dtype != torch.bool:
                raise ValueError(f"allowed must be bool of shape {tuple(d.shape)}")
            candidates = candidates & allowed
        has_neg = candidates.any(dim=1)
        pos = self.alpha_pos * F.relu(d_pos - b).mean()
        if has_neg.any():
            d_neg = d.masked_fill(~candidates, float("inf")).min(dim=1).values[has_neg]
            neg = self.alpha_neg * F.relu(9 * b + self.eps - d_neg).mean()
        else:
            neg = (0 * b).sum() + 0 * x.sum()
        return {"ctrd_pos": pos, "ctrd_neg": neg}
