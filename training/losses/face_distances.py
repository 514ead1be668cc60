"""A title's face distances for the SSiam/TSiam miners (:mod:`training.losses.siamese_miners`),
made once per title: squared norms, exact float64 distances by blocks of rows (the whole matrix
kept when it fits ``cache_mb``), and per face neighbour lists (its nearest and farthest faces;
for TSiam the nearest faces of related tracks) picked with float32 distances and given exact
float64 ones, each list with a rigorous bound on the float32 error so a miner knows when a list
answers a frame exactly.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

BLOCK_ROWS = 256          # distinct frames mined per block: (BLOCK_ROWS, U) float64 at a time
CACHE_MB = 256            # a title's whole float64 distance matrix is kept when it fits this
LIST_MIN, LIST_DRAWS = 32, 8   # neighbour lists: max(LIST_MIN, LIST_DRAWS * F / draw) faces
# Lists cost O(F^2 D) per title; without them an epoch mines ceil(F / pairs) draws of U <= draw
# distinct frames, O(F U^2 D / pairs): the lists stop paying near F = U^2 / pairs (about 70,000
# faces at draw 3000, 128 pairs). Above this many faces a title gets no lists.
LIST_MAX_FACES = 50_000
_U32 = 2.0 ** -24         # float32 unit roundoff


def _sqdist(a: np.ndarray, sq_a: np.ndarray, b: np.ndarray, sq_b: np.ndarray) -> np.ndarray:
    """(R, D), (U, D) float64 -> (R, U) sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0)), as the reference."""
    g = a @ b.T if a is not b else a @ a.T          # a @ a.T: numpy's syrk, half the work
    return _finish(g, sq_a[:, None], sq_b[None, :])


def _finish(g: np.ndarray, sq_a: np.ndarray, sq_b: np.ndarray) -> np.ndarray:
    """Dot products ``g`` (float64, overwritten) -> sqrt(max((|a|^2 + |b|^2) - 2 a.b, 0)), the
    norms added first (as the reference): symmetric in a and b where the dot products are."""
    g *= -2
    g += sq_a + sq_b
    np.maximum(g, 0, out=g)
    return np.sqrt(g, out=g)


class Lists(NamedTuple):
    """Per face of a title, the ``width`` faces nearest to it (or farthest from it) among its
    candidates, with their exact float64 distances (``face`` -1 and distance +-inf past the
    candidates), and ``bound``: every face outside a row's list is at >= ``bound`` (nearest
    lists; +inf: the list holds every candidate) or <= ``bound`` (farthest lists; -inf: all)."""
    face: np.ndarray     # (F, L) int64
    dist: np.ndarray     # (F, L) float64
    bound: np.ndarray    # (F,) float64


def _list_rows(d2: np.ndarray, rows: np.ndarray, x: np.ndarray, sq: np.ndarray, width: int,
               eps: np.ndarray, sign: int) -> tuple:
    """One row block of a :class:`Lists` from the float32 squared distances ``d2`` (R, F) of
    faces ``rows`` (+inf: not a candidate): ``sign`` 1 the ``width`` nearest, -1 the farthest.
    The picked faces get exact float64 distances; ``bound`` is the width-th float32 value less
    (more) its float32 error ``eps`` (R,), so it holds for the exact distances."""
    n = d2.shape[1]
    if width < n:                      # torch's topk: ~6x numpy's argpartition here
        top = torch.topk(torch.from_numpy(d2), width, dim=1, largest=sign < 0, sorted=False)
        picked, idx = top.values.numpy(), top.indices.numpy()
    else:
        picked, idx = d2, np.broadcast_to(np.arange(n), d2.shape)
    ok = np.isfinite(picked)
    g = np.empty(idx.shape)
    for s in range(0, len(rows), 64):                              # exact dot products,
        r = slice(s, s + 64)                                       # (64, L, D) at a time
        g[r] = np.matmul(x[idx[r]], x[rows[r]][:, :, None])[:, :, 0]
    dist = np.where(ok, _finish(g, sq[rows][:, None], sq[idx]), sign * np.inf)
    kth = (picked.max(1) if sign > 0 else picked.min(1)).astype(np.float64)   # width-th value
    if sign > 0:
        bound = np.sqrt(np.maximum(kth - eps, 0)) * (1 - 1e-9)
        bound[(width >= n) | ~np.isfinite(kth)] = np.inf           # every candidate listed
    else:
        bound = np.sqrt(np.maximum(kth + eps, 0)) * (1 + 1e-9)
        if width >= n:
            bound[:] = -np.inf
    return np.where(ok, idx, -1), dist, bound


class FaceDistances:
    """Exact float64 Euclidean distances among the F faces ``x`` (F, D) of one title.

    ``block(rows, cols)`` -> (len(rows), len(cols)) distances between faces ``rows`` and
    ``cols``. With ``draw`` (faces per draw) and at most :data:`LIST_MAX_FACES` faces, the
    title's neighbour lists are made once
    (:class:`Lists`, O(F^2 D) in float32, then exact float64 for the listed faces): SSiam's
    nearest and farthest faces (``near``, ``far``), or with ``track`` (F,) and TSiam's
    ``negatives`` the nearest faces of related tracks (``related``); a miner then answers
    most frames of a draw from the lists, O(U L), and mines only the rest from distances.
    Without ``draw`` the whole (F, F) matrix is kept when F^2 * 8 bytes <= ``cache_mb`` MiB,
    so a draw only gathers; otherwise the miners compute a draw's distinct frames block by
    block (O(U^2 D)). Memory: the faces in float64 plus the lists (or the matrix)."""

    def __init__(self, x, cache_mb: float = CACHE_MB, draw: int | None = None, track=None,
                 negatives=None):
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        self.x = np.ascontiguousarray(x, np.float64)
        self.sq = np.einsum("ij,ij->i", self.x, self.x)
        n = len(self.x)
        self.full = self.near = self.far = self.related = None
        self.negatives = negatives
        if draw and 0 < n <= LIST_MAX_FACES:
            width = min(n, max(LIST_MIN, -(-LIST_DRAWS * n // int(draw))))
            if negatives is None:
                self.near, self.far = self._lists(width, (1, -1))
            else:
                rel = sp.csr_matrix(negatives, dtype=bool)      # (T, T), never made dense
                track = np.asarray(track, np.int64)
                (self.related,) = self._lists(
                    width, (1,), lambda rows: rel[track[rows]][:, track].toarray())
        elif n * n * 8 <= cache_mb * 2 ** 20:
            self.full = _sqdist(self.x, self.sq, self.x, self.sq)

    def _lists(self, width: int, signs: tuple, candidates=None) -> list:
        """:class:`Lists` per sign (1 nearest, -1 farthest) among ``candidates(rows)`` ->
        (R, F) bool (None: every face), from float32 row blocks of the squared distances."""
        x32, sq32 = self.x.astype(np.float32), self.sq.astype(np.float32)
        norm = np.sqrt(self.sq)
        eps = (2 * self.x.shape[1] + 32) * _U32 * (norm + norm.max()) ** 2   # float32 error
        parts = [[] for _ in signs]
        for s in range(0, len(self.x), BLOCK_ROWS):
            rows = np.arange(s, min(s + BLOCK_ROWS, len(self.x)))
            d2 = x32[rows] @ x32.T
            d2 *= -2
            d2 += sq32[rows, None]
            d2 += sq32[None, :]
            if candidates is not None:
                d2[~candidates(rows)] = np.inf
            for part, sign in zip(parts, signs):
                part.append(_list_rows(d2, rows, self.x, self.sq, width, eps[rows], sign))
        return [Lists(*(np.concatenate(c) for c in zip(*part))) for part in parts]

    def __len__(self) -> int:
        return len(self.x)

    def block(self, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """A fresh (len(rows), len(cols)) array (``cols`` None: every face, in order; ``cols``
        ``rows`` itself: exactly symmetric)."""
        if self.full is not None:      # whole rows first, then columns: ~3x np.ix_'s speed
            return self.full[rows] if cols is None else self.full[rows][:, cols]
        if cols is None:
            return _sqdist(self.x[rows], self.sq[rows], self.x, self.sq)
        a = self.x[rows]                     # cols is rows: a symmetric block (syrk)
        return _sqdist(a, self.sq[rows], a if cols is rows else self.x[cols], self.sq[cols])
