"""Clustering of track embeddings: HAC with known K, HAC with a distance threshold, affinity
propagation. Embeddings (N, E) are L2-normalised first; HAC works on squared Euclidean
distances (= 2 - 2 cos), as BCL's stopping rule (methods.md 1.5) is defined there.

Both HACs take an optional ``cannot_link`` (P, 2) array of row-index pairs (two tracks sharing a
frame; :func:`cannot_link_pairs` builds it from a shard's columns): then no cluster ever holds a
cannot-linked pair (:func:`hac_constrained`), and fewer merges than asked may be possible.
Without it they are scipy's, unchanged.
"""
from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist
from sklearn.cluster import AffinityPropagation

from harvest.vectors import l2_normalize

LINKAGES = ("single", "complete", "average", "weighted", "centroid", "median", "ward")


def _unit(x: np.ndarray) -> np.ndarray:
    return l2_normalize(x, dtype=np.float64)


def dendrogram(emb: np.ndarray, method: str = "complete") -> np.ndarray:
    """Linkage matrix of the squared Euclidean distances of unit-normalised (N, E) rows."""
    if method not in LINKAGES:
        raise ValueError(f"unknown linkage {method!r}")
    return linkage(pdist(_unit(emb), "sqeuclidean"), method=method)


def hac_k(emb: np.ndarray, k: int, method: str = "average", cannot_link=None) -> np.ndarray:
    """(N,) cluster ids, exactly min(k, N) clusters (at least, with ``cannot_link``)."""
    if cannot_link is not None:
        return hac_constrained(emb, cannot_link, k=k, method=method)
    if len(emb) == 1:
        return np.ones(1, int)
    return fcluster(dendrogram(emb, method), t=min(k, len(emb)), criterion="maxclust")


def hac_threshold(emb: np.ndarray, threshold: float, method: str = "complete",
                  cannot_link=None) -> np.ndarray:
    """(N,) cluster ids; merging stops above ``threshold`` (squared Euclidean; BCL: 4b)."""
    if cannot_link is not None:
        return hac_constrained(emb, cannot_link, threshold=threshold, method=method)
    if len(emb) == 1:
        return np.ones(1, int)
    return fcluster(dendrogram(emb, method), t=threshold, criterion="distance")


def threshold_for_k(emb: np.ndarray, k: int, method: str = "complete") -> float:
    """The cut height giving k clusters: midway between the merges N-k and N-k+1."""
    z = dendrogram(emb, method)
    heights = np.concatenate([[0.0], z[:, 2], [z[-1, 2] if len(z) else 0.0]])
    n = len(emb)
    k = int(np.clip(k, 1, n))
    lo, hi = heights[n - k], heights[n - k + 1]
    return float((lo + hi) / 2)


def affinity_propagation(emb: np.ndarray, damping: float = 0.5, seed: int = 0) -> np.ndarray:
    """(N,) cluster ids from affinity propagation on cosine similarity (preference = median)."""
    if len(emb) == 1:
        return np.zeros(1, int)
    x = _unit(emb)
    ap = AffinityPropagation(affinity="precomputed", damping=damping, random_state=seed)
    return ap.fit_predict(x @ x.T)



def cannot_link_pairs(track_ids, cannot_link) -> np.ndarray:
    """(P, 2) row-index pairs i < j from a shard's ``track_id`` and ``cannot_link`` (track ids
    of the same title) columns; links to tracks not in ``track_ids`` are ignored."""
    row = {int(t): i for i, t in enumerate(track_ids)}
    pairs = {(min(i, row[int(o)]), max(i, row[int(o)])) for i, links in enumerate(cannot_link)
             for o in (links if links is not None else ()) if int(o) in row and row[int(o)] != i}
    return np.array(sorted(pairs), np.int64).reshape(-1, 2)


#: the cluster distance of a merged pair (i, j) to every other cluster, from the two rows of
#: distances and the two cluster sizes: the Lance-Williams update of each linkage
LANCE_WILLIAMS = {
    "single": lambda di, dj, si, sj: np.minimum(di, dj),
    "complete": lambda di, dj, si, sj: np.maximum(di, dj),
    "average": lambda di, dj, si, sj: (si * di + sj * dj) / (si + sj),
    "weighted": lambda di, dj, si, sj: (di + dj) / 2,
}
CONSTRAINED_LINKAGES = tuple(LANCE_WILLIAMS)


def _distances_and_constraints(emb: np.ndarray, cannot_link) -> tuple[np.ndarray, np.ndarray]:
    """(N, N) squared Euclidean distances of the unit rows of ``emb``, and (N, N) bool: the
    pairs that may never share a cluster (cannot-links, and each point with itself)."""
    x = _unit(emb)
    n = len(x)
    pairs = np.asarray(cannot_link, np.int64).reshape(-1, 2)
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError("cannot_link index out of range")
    sq = (x * x).sum(1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    forbid = np.zeros((n, n), bool)
    forbid[pairs[:, 0], pairs[:, 1]] = forbid[pairs[:, 1], pairs[:, 0]] = True
    np.fill_diagonal(forbid, True)
    return d, forbid


def hac_constrained(emb: np.ndarray, cannot_link, k: int | None = None,
                    threshold: float | None = None, method: str = "average") -> np.ndarray:
    """HAC under cannot-links: (N,) cluster ids 1..C, no cluster holding a cannot-linked pair.

    Greedy agglomeration on squared Euclidean distances of unit rows, cluster distances by
    Lance-Williams (``single``, ``complete``, ``average``, ``weighted``); a cluster pair that
    contains a cannot-linked pair is at infinity and never merges. Stops at ``k`` clusters, at
    the first merge above ``threshold``, or when every remaining pair is forbidden. Without
    constraints it reproduces scipy's partitions (ties aside).

    Cost: O(N^2) memory (one distance matrix, one bool matrix); each merge is O(N) plus O(N)
    per row whose nearest cluster took part in it: O(N^2) typical, O(N^3) worst case.
    """
    if method not in CONSTRAINED_LINKAGES:
        raise ValueError(f"cannot-link HAC supports {CONSTRAINED_LINKAGES}, not {method!r}")
    if (k is None) == (threshold is None):
        raise ValueError("give exactly one of k and threshold")
    d, forbid = _distances_and_constraints(emb, cannot_link)
    n = len(d)
    alive = np.ones(n, bool)
    size = np.ones(n)
    owner = np.arange(n)                       # cluster (surviving row) of each point

    def eff(i):
        return np.where(forbid[i] | ~alive, np.inf, d[i])

    nnd = np.full(n, np.inf)
    nn = np.zeros(n, np.int64)
    for i in range(n):
        row = eff(i)
        nn[i] = row.argmin()
        nnd[i] = row[nn[i]]
    clusters = n
    while clusters > (k if k is not None else 1):
        cand = np.where(alive, nnd, np.inf)
        i = int(cand.argmin())
        if not np.isfinite(cand[i]) or (threshold is not None and cand[i] > threshold):
            break
        j = int(nn[i])
        i, j = min(i, j), max(i, j)
        new = LANCE_WILLIAMS[method](d[i], d[j], size[i], size[j])
        d[i], d[:, i] = new, new
        forbid[i] |= forbid[j]
        forbid[:, i] = forbid[i]
        size[i] += size[j]
        alive[j] = False
        owner[owner == j] = i
        clusters -= 1
        stale = np.flatnonzero(alive & ((nn == i) | (nn == j)))
        closer = np.flatnonzero(alive & ~forbid[i] & (d[i] < nnd))
        for r in np.union1d(np.union1d(stale, closer), [i]):
            row = eff(r)
            nn[r] = row.argmin()
            nnd[r] = row[nn[r]]
    _, labels = np.unique(owner, return_inverse=True)
    return labels + 1
