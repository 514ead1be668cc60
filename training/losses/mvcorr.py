"""Deep multiset CCA objective (MvCorr), methods.md 3.1 and 3.3.

Input ``views`` (m, N, D): m objects (tracks), N views each (the three tracklets), D output
dimensions. The D x D algebra runs in float64; the loss is returned in the input dtype.
"""
from __future__ import annotations

import torch

from training.losses.base import BaseLoss


def mcca_covariances(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, N, D) -> (R_W, R_B), both (D, D) float64: within-view and between-view covariance."""
    m, n_views, _ = views.shape
    z = views.double() - views.double().mean(dim=0, keepdim=True)
    r_w = torch.einsum("mvd,mve->de", z, z) / (m - 1)
    s = z.sum(dim=1)
    r_t = s.T @ s / (m - 1)
    r_b = (r_t - r_w) / (n_views - 1)
    return r_w, r_b


class MvCorrLoss(BaseLoss):
    """loss = -mean_d ISC_d over all D components (methods.md 3.1 step 8).

    Args:
        gamma: shrinkage of the within-view covariance, R~_W = (1-g) R_W + g tr(R_W)/D I.
        ridge: extra ridge on R~_W for the Cholesky (harmless, 3.3).
    """

    input_ndims = (3,)

    def __init__(self, gamma: float = 0.2, ridge: float = 1e-6):
        super().__init__()
        self.gamma = gamma
        self.ridge = ridge

    def isc(self, views: torch.Tensor) -> torch.Tensor:
        """(m, N, D) -> (D,) inter-set correlations, descending by generalised eigenvalue."""
        m, n_views, dim = views.shape
        if m < 2 or n_views < 2:
            raise ValueError(f"MvCorr needs m >= 2 objects and N >= 2 views, got {tuple(views.shape)}")
        r_w, r_b = mcca_covariances(views)
        eye = torch.eye(dim, dtype=r_w.dtype, device=r_w.device)
        r_w_reg = (1 - self.gamma) * r_w + self.gamma * torch.diagonal(r_w).mean() * eye
        r_w_reg = r_w_reg + self.ridge * eye
        chol = torch.linalg.cholesky(r_w_reg)
        chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)
        c = chol_inv @ r_b @ chol_inv.T
        c = (c + c.T) / 2
        _, vecs = torch.linalg.eigh(c)
        w = chol_inv.T @ vecs.flip(-1)
        w = w / w.norm(dim=0, keepdim=True)
        num, den = torch.diagonal(w.T @ r_b @ w), torch.diagonal(w.T @ r_w @ w)
        # With fewer objects than dimensions R_W is singular: along its null directions R_B is
        # null too (0/0). Those components carry no correlation: count them as ISC 0, not NaN.
        floor = 1e-9 * torch.diagonal(r_w).mean().clamp_min(1e-30)
        return torch.where(den > floor, num / den.clamp_min(floor), torch.zeros_like(num))

    def compute(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mvcorr": -self.isc(views).mean().to(views.dtype)}
