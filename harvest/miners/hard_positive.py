"""Hard-positive tracklets inside a track (Multi-Face, section 3).

The anchor a and first positive p1 are the farthest pair of faces; each grows into its
k = floor(N / n) nearest remaining faces (taken faces leave the pool); every later positive is
built around the remaining face farthest from the anchor. Tracklet = L2-normalised mean.

Memory is O(N * D): the farthest pair is searched with matrix products over blocks of rows
(``BLOCK_ROWS`` x N distances at a time, upper triangle only), and only the few rows that can hold the maximum are
re-measured exactly; growth needs one row of distances per seed. The result is identical to the
brute-force definition on the full N x N matrix of ``||e_i - e_j||`` (first maximum in row-major
order, stable sort for the nearest k).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harvest.vectors import l2_normalize

BLOCK_ROWS = 512   # rows of the distance matrix held at once while searching the farthest pair
# Squared-distance slack between the matrix-product estimate and the exact distance: far above
# float32 rounding (~D * 6e-8 for unit vectors), so every row that may hold the true maximum is
# re-measured exactly.
_SLACK = 1e-3


@dataclass(frozen=True)
class Tracklets:
    vectors: np.ndarray | None    # (n, D) unit-norm, or None when the track has < n faces
    members: list                 # n lists of face positions (ascending), or []
    seeds: list = field(default_factory=list)   # the face each tracklet is built around, or []


def distance_row(emb: np.ndarray, i: int) -> np.ndarray:
    """(N,) exact distances ||e_i - e_j||, the same float operations as the full matrix."""
    return np.linalg.norm(emb[i] - emb, axis=-1)


def farthest_pair(emb: np.ndarray, block: int = BLOCK_ROWS) -> tuple[int, int, np.ndarray]:
    """-> (a, p1, distance row of a): the first maximum of the pairwise distance matrix in
    row-major order, without building the matrix."""
    e = np.asarray(emb, np.float32)
    sq = np.einsum("ij,ij->i", e, e)
    row_max = np.full(len(e), -np.inf, np.float32)
    for s in range(0, len(e), block):                  # upper triangle only (symmetry)
        d2 = e[s:s + block] @ e[s:].T                  # (b, N - s) dot products ...
        d2 *= -2.0
        d2 += sq[s:s + block, None]
        d2 += sq[None, s:]                             # ... turned into squared distances
        np.maximum(row_max[s:s + block], d2.max(axis=1), out=row_max[s:s + block])
        np.maximum(row_max[s:], d2.max(axis=0), out=row_max[s:])
    best, a, p1, row_a = -np.inf, 0, 0, None
    for i in np.flatnonzero(row_max >= row_max.max() - _SLACK):   # ascending rows
        row = distance_row(emb, int(i))
        j = int(np.argmax(row))
        if row[j] > best:
            best, a, p1, row_a = row[j], int(i), j, row
    return a, p1, row_a


def _seed(i: int, a: int, p1: int, dist_a: np.ndarray, pool: np.ndarray) -> int:
    """The face tracklet ``i`` grows from: a, then p1 (if still free), then the free face
    farthest from a."""
    if i == 0:
        return a
    if i == 1 and pool[p1]:
        return p1
    return int(np.flatnonzero(pool)[np.argmax(dist_a[pool])])


def mine_tracklets(emb: np.ndarray, n: int = 3) -> Tracklets:
    """emb (N, D) unit-norm faces of one track -> n tracklets."""
    N = len(emb)
    if N < n:
        return Tracklets(None, [])
    k = N // n
    a, p1, dist_a = farthest_pair(emb)
    pool = np.ones(N, bool)
    members, seeds = [], []
    for seed_i in range(n):
        seed = _seed(seed_i, a, p1, dist_a, pool)
        row = dist_a if seed == a else distance_row(emb, seed)
        cand = np.flatnonzero(pool)
        take = cand[np.argsort(row[cand], kind="stable")[:k]]
        pool[take] = False
        members.append(sorted(int(i) for i in take))
        seeds.append(seed)
    vectors = l2_normalize(np.stack([emb[m].mean(axis=0) for m in members]))
    return Tracklets(vectors, members, seeds)


def tracklet_seeds(emb: np.ndarray, members: list) -> list[int]:
    """The seeds of tracklets already mined (``members``) from ``emb``, without re-growing
    them: the same rule as ``mine_tracklets`` (used by ``harvest validate``)."""
    if not members:
        return []
    a, p1, dist_a = farthest_pair(emb)
    pool = np.ones(len(emb), bool)
    seeds = []
    for i, m in enumerate(members):
        seeds.append(_seed(i, a, p1, dist_a, pool))
        pool[m] = False
    return seeds
