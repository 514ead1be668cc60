"""Contrastive loss of SSiam / TSiam (Hadsell et al.), methods.md 4.4.

Inputs ``e1, e2`` (P, E) the two embeddings of each pair and ``similar`` (P,) with 1 for a
similar pair, 0 for a dissimilar one. Per pair c D^2 + (1 - c) max(m - D, 0)^2 with D the
Euclidean distance and margin m = 1; no 0.5 factor; mean over the pairs (MatConvNet sums and
divides the gradient by the batch size, which is this mean).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses.base import BaseLoss


class ContrastiveLoss(BaseLoss):
    """L = mean[c D^2 + (1 - c) relu(m - D)^2]; components ``similar`` and ``dissimilar``.

    D^2 is the exact sum of squares (smooth at 0); D = sqrt(clamp(D^2, 1e-12)) in the hinge, so
    the gradient stays finite when a dissimilar pair coincides (the reference adds 1e-4 to D in
    its backward pass for the same reason).
    """

    input_ndims = (2, 2, 1)

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def compute(self, e1, e2, similar) -> dict[str, torch.Tensor]:
        if e1.shape != e2.shape or similar.shape != (e1.shape[0],):
            raise ValueError("e1, e2 must be (P, E) and similar (P,)")
        if not ((similar == 0) | (similar == 1)).all():
            raise ValueError("similar must hold 0 or 1")
        c = similar.to(e1.dtype)
        d2 = ((e1 - e2) ** 2).sum(dim=1)
        d = d2.clamp(min=1e-12).sqrt()
        n = e1.shape[0]
        return {"similar": (c * d2).sum() / n,
                "dissimilar": ((1 - c) * F.relu(self.margin - d) ** 2).sum() / n}
