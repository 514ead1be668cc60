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

    Weak labels (``allowed`` given) calibrate the cut. A cluster is one track, so no positive
    pair spans two tracks (d_own stays far below b) and nothing bounds a person's spread across
    tracks; b only moves down, pushed by the negative hinge, and at 0.1x lr after a 2-epoch
    freeze it moves little on a small corpus (measured: 0.744 -> 0.68 after 20 one-batch
    epochs, 0.35 after 400), so 4b merged every track. Each weak forward pass (training and
    validation) records the ``calib_quantile`` of the batch's cannot-link distances d_neg (pairs
    known to be two people) as an exponential mean (``calibrated_cut``, momentum
    ``calib_momentum``, a buffer saved with the loss); the HAC cut is min(4b, calibrated cut).
    Supervised training and the published checkpoint leave it unset (NaN): 4b as before.
    """

    input_ndims = (2, 1)

    def __init__(self, init_bias: float = 0.1, alpha_pos: float = 4.0, alpha_neg: float = 1.0,
                 eps: float = 0.05, calib_quantile: float = 0.05, calib_momentum: float = 0.5):
        super().__init__()
        self.h_bias = torch.nn.Parameter(torch.tensor(float(init_bias)))
        self.alpha_pos, self.alpha_neg, self.eps = alpha_pos, alpha_neg, eps
        self.calib_quantile, self.calib_momentum = calib_quantile, calib_momentum
        self.register_buffer("calibrated_cut", torch.tensor(float("nan")))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before the calibration (and the published one) have no buffer
        state_dict.setdefault(prefix + "calibrated_cut", torch.tensor(float("nan")))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def b(self) -> torch.Tensor:
        """Squared ball radius softplus(h)."""
        return F.softplus(self.h_bias)

    def hac_threshold(self) -> float:
        """Squared-Euclidean HAC stopping distance 4b (methods.md 1.5); weak labels: min(4b,
        calibrated cut)."""
        cut, cal = float(4 * self.b.detach()), float(self.calibrated_cut)
        return min(cut, cal) if cal == cal else cut

    @torch.no_grad()
    def _calibrate(self, d_neg: torch.Tensor) -> None:
        q = torch.quantile(d_neg.double(), self.calib_quantile).to(self.calibrated_cut)
        m, old = self.calib_momentum, self.calibrated_cut
        self.calibrated_cut.copy_(q if torch.isnan(old) else m * old + (1 - m) * q)

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
            if allowed is not None:
                self._calibrate(d_neg.detach())
        else:
            neg = (0 * b).sum() + 0 * x.sum()
        return {"ctrd_pos": pos, "ctrd_neg": neg}
