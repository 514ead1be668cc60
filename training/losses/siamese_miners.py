"""Pair miners of SSiam and TSiam (methods.md 4.3, 4.5), separate from the loss.

Both work on one draw of B candidate frames (``draw``: uniform with replacement) and return
:class:`Pairs` of indices into that draw: the positives (label 1) first, then the negatives
(label 0), ``n_pairs // 2`` positives and the rest negatives (the odd slot goes to the negatives,
as in the reference). Mining uses the raw input features, in float64, O(B^2) time and memory
(B = 3000: 72 MB); nothing here is differentiable.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp
import torch


class Pairs(NamedTuple):
    first: torch.Tensor    # (P,) int64 indices into the draw
    second: torch.Tensor   # (P,) int64
    similar: torch.Tensor  # (P,) int64, 1 = positive, 0 = negative


def draw(n_frames: int, b: int = 3000, generator: torch.Generator | None = None) -> torch.Tensor:
    """(b,) frame indices drawn uniformly with replacement (MATLAB ``randi``)."""
    if n_frames < 1:
        raise ValueError("no frames to draw from")
    return torch.randint(n_frames, (b,), generator=generator)


def distance_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) sqrt(|a|^2 + |b|^2 - 2 a.b) in float64; negative rounding -> 0 (the
    reference takes the real part of the square root)."""
    x = x.detach().to(torch.float64)
    sq = (x * x).sum(dim=1)
    return (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp(min=0).sqrt()


def _split(n_pairs: int) -> tuple[int, int]:
    if n_pairs < 2:
        raise ValueError("n_pairs must be at least 2")
    return n_pairs // 2, n_pairs - n_pairs // 2


def _pack(pos_i, pos_j, neg_i, neg_j) -> Pairs:
    first, second = torch.cat([pos_i, neg_i]), torch.cat([pos_j, neg_j])
    similar = torch.cat([torch.ones(len(pos_i), dtype=torch.int64),
                         torch.zeros(len(neg_i), dtype=torch.int64)]).to(first.device)
    return Pairs(first, second, similar)


def ssiam_neighbours(x: torch.Tensor):
    """-> (nn, r, fn, f): for each row of ``x`` (B, D), column 1 of its stably sorted distance
    row (NN, distance r) and the last column (FN, distance f), as the reference's ``sort``.
    Found without sorting: column 0 = first minimum, column 1 = first minimum once column 0 is
    masked, last column = last maximum. Column 0 is taken as the point itself, which is wrong
    for a frame drawn twice (4.3 step 3); kept for fidelity."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("x must be (B, D) with B >= 2")
    d = distance_matrix(x)
    rows = torch.arange(d.shape[0], device=d.device)
    col0 = d.argmin(dim=1)
    masked = d.clone()
    masked[rows, col0] = float("inf")
    nn = masked.argmin(dim=1)
    fn = d.shape[1] - 1 - d.flip(1).argmax(dim=1)
    return nn, d[rows, nn], fn, d[rows, fn]


def ssiam_pairs(x: torch.Tensor, n_pairs: int = 128) -> Pairs:
    """SSiam mining (4.3) on the features ``x`` (B, D) of one draw: positives (i, NN(i)) for
    the K samples of largest r_i, negatives (i, FN(i)) for the K samples of smallest f_i
    (:func:`ssiam_neighbours`); ties keep index order (MATLAB's stable sort)."""
    k_pos, k_neg = _split(n_pairs)
    nn, r, fn, f = ssiam_neighbours(x)
    pos = torch.argsort(-r, stable=True)[:k_pos]
    neg = torch.argsort(f, stable=True)[:k_neg]
    return _pack(pos, nn[pos], neg, fn[neg])


def tsiam_negative_tracks(means: np.ndarray, cannot_link: Sequence[Sequence[int]],
                          n_far: int = 25, block: int = 1024) -> sp.csr_matrix:
    """(T, T) symmetric bool relation "may serve as negatives" between the T tracks of a title.

    ``cannot_link[t]``: row indices of the tracks co-occurring with track t. A track with no
    cannot-link (a singleton) takes its ``n_far`` farthest tracks by the Euclidean distance of
    the mean features (4.5); the relation is then symmetrised. Farthest tracks are found in row
    blocks: O(T^2 D) time, O(block T) memory.
    """
    means = np.asarray(means, np.float64)
    t = len(means)
    if len(cannot_link) != t:
        raise ValueError("cannot_link needs one entry per track")
    rows = [np.full(len(c), i) for i, c in enumerate(cannot_link)]
    cols = [np.asarray(c, np.int64) for c in cannot_link]
    singles = np.array([i for i, c in enumerate(cannot_link) if len(c) == 0], np.int64)
    k = min(n_far, t - 1)
    if k > 0:
        sq = (means * means).sum(1)
        for s in range(0, len(singles), block):
            idx = singles[s:s + block]
            d2 = sq[idx, None] + sq[None, :] - 2 * means[idx] @ means.T
            d2[np.arange(len(idx)), idx] = -np.inf                     # never itself
            far = np.argpartition(-d2, k - 1, axis=1)[:, :k]
            rows.append(np.repeat(idx, k))
            cols.append(far.ravel())
    empty = [np.zeros(0, np.int64)]
    r, c = np.concatenate(rows + empty), np.concatenate(cols + empty)
    rel = sp.csr_matrix((np.ones(len(r), bool), (r, c)), shape=(t, t))
    return (rel + rel.T).astype(bool).tocsr()


def tsiam_pairs(x: torch.Tensor, track: torch.Tensor, negatives: sp.spmatrix,
                frame: torch.Tensor | None = None, n_pairs: int = 128) -> Pairs:
    """TSiam mining (4.5) on one draw: ``x`` (B, D) features, ``track`` (B,) track row of each
    candidate, ``negatives`` from :func:`tsiam_negative_tracks`, ``frame`` (B,) optional global
    frame ids (a frame drawn twice is never paired with itself).

    Positives: two frames of the same track; negatives: frames of two tracks related by
    ``negatives``. Which pairs are kept is not documented [unverified]; this follows SSiam's
    hardness rule: each candidate's farthest same-track frame (distance r_i) and nearest
    negative frame (f_i); the K of largest r_i and the K of smallest f_i, ties in index order.
    Fewer pairs come back when the draw holds fewer candidates.
    """
    if x.ndim != 2 or track.shape != (x.shape[0],):
        raise ValueError("x must be (B, D) and track (B,)")
    k_pos, k_neg = _split(n_pairs)
    d = distance_matrix(x)
    b = d.shape[0]
    ids = torch.arange(b, device=d.device) if frame is None else frame.to(d.device)
    tr = track.to(d.device)
    uniq, inv = torch.unique(tr, return_inverse=True)
    u = uniq.cpu().numpy()
    sub = torch.as_tensor(negatives[u][:, u].toarray(), device=d.device)     # (U, U) bool
    same = (tr[:, None] == tr[None, :]) & (ids[:, None] != ids[None, :])
    neg = sub[inv][:, inv]
    pos_d = d.masked_fill(~same, float("-inf"))
    pj = pos_d.argmax(dim=1)
    r = pos_d.gather(1, pj[:, None]).squeeze(1)
    neg_d = d.masked_fill(~neg, float("inf"))
    nj = neg_d.argmin(dim=1)
    f = neg_d.gather(1, nj[:, None]).squeeze(1)
    pos = torch.argsort(-r, stable=True)[:k_pos]
    pos = pos[torch.isfinite(r[pos])]
    negs = torch.argsort(f, stable=True)[:k_neg]
    negs = negs[torch.isfinite(f[negs])]
    return _pack(pos, pj[pos], negs, nj[negs])
