"""FINCH: parameter-free clustering by first-neighbour relations (methods.md 6.1), with the
graph pieces C1C (:mod:`training.clustering.c1c`) builds on.

Semantics follow the GitHub reference (``ssarfraz/FINCH-Clustering`` ``finch/finch.py``), not
the PyPI ``finch-clust`` rewrite:

* kappa(i) = nearest neighbour of i (cosine by default, or euclidean). i ~ j when j = kappa(i),
  i = kappa(j) or kappa(i) = kappa(j); clusters are the connected components.
* Each round replaces a cluster by the mean of its *original* points and repeats; a round that
  gives 1 cluster or no reduction is dropped and ends the loop, one that reduces the count by
  exactly 1 is kept and ends it.
* ``ensure_early_exit``: after partition 0 the cap is the longest edge of its graph (shared-
  neighbour edges included); later rounds delete longer edges before taking components.
* ``req_clust``: from the last partition with at least that many clusters, merge the single
  closest pair (first neighbours recomputed on the means) until the count is reached.

Edge lengths (``weighted``, default True = the reference): the cap compares each edge's length
times its entry in (P+I)(P+I)^T, which is 2 for a mutual first-neighbour pair and 1 otherwise.
methods.md describes plain lengths (its vector says cap 0.7; the reference computes 0.8, the
mutual pair 6.0-6.4 doubled); ``weighted=False`` gives that reading. Both give the 6.3 partitions.

Differences from the reference: first neighbours are always exact (it switches to approximate
pynndescent above 70,000 points, which also silently turns its early exit off); arithmetic is
float64 (it casts to float32). Checked against a local transcription of the reference on random
data (FINCH and C1C, both metrics, early exit on and off, req_clust): identical partitions.

Scale: first neighbours by row blocks of at most ~64 MB (no N x N matrix): O(N^2 E) time,
O(N E + block) memory per round; components O(N). The shared-neighbour edges are never needed
for components under plain lengths (kappa(i) is nearer to i than any j sharing it, so the kappa
edges already join them under any cap); they enter the cap, at O(sum_k g_k^2 E) for the
in-neighbour groups g_k of each point (blocked), and, under weighted lengths, the components
of a mutual pair whose doubled edge is cut (O(g_k E) each). ``req_clust`` costs one
first-neighbour pass per merge.
"""
from __future__ import annotations

from collections.abc import Callable

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

METRICS = ("cosine", "euclidean")
BLOCK_BYTES = 1 << 26


class Result(NamedTuple):
    partitions: np.ndarray          # (N, P) int labels, one column per kept partition
    counts: list[int]               # clusters in each partition
    req: np.ndarray | None          # (N,) labels with exactly req_clust clusters, if asked


def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}")
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError("data must be a non-empty (N, E) array")
    if not np.isfinite(x).all():
        raise ValueError("data has non-finite values")
    return x


def pairwise(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """(n, E), (m, E) -> (n, m) distances: euclidean, or cosine = 1 - cos (zero rows: 1)."""
    if metric == "cosine":
        na = np.linalg.norm(a, axis=1, keepdims=True)
        nb = np.linalg.norm(b, axis=1, keepdims=True)
        return 1.0 - (a / np.where(na > 0, na, 1)) @ (b / np.where(nb > 0, nb, 1)).T
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0))


def rowwise(x: np.ndarray, i: np.ndarray, j: np.ndarray, metric: str,
            cannot: sp.csr_matrix | None = None, big: float = 1000.0) -> np.ndarray:
    """Distances of the pairs (i[k], j[k]); cannot-linked pairs are ``big``. O(len(i) E)."""
    if metric == "cosine":
        a, b = x[i], x[j]
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        d = 1.0 - (a * b).sum(1) / np.where(na * nb > 0, na * nb, 1)
    else:
        d = np.sqrt(((x[i] - x[j]) ** 2).sum(1))
    if cannot is not None and len(i):
        d[np.asarray(cannot[i, j]).ravel().astype(bool)] = big
    return d


def first_neighbours(x: np.ndarray, metric: str, cannot: sp.csr_matrix | None = None,
                     diag: float = np.inf, big: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    """Exact (kappa (N,), distance (N,)) by row blocks. The diagonal is ``diag`` and cannot-
    linked pairs are ``big`` (C1C sets both to 1000, so a point whose every other pair is
    cannot-linked is its own first neighbour); ties go to the lowest index."""
    n = len(x)
    rows = max(1, BLOCK_BYTES // (8 * n))
    kappa, dist = np.empty(n, np.int64), np.empty(n)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        d = pairwise(x[s:e], x, metric)
        r = np.arange(e - s)
        if cannot is not None:
            blk = cannot[s:e].tocoo()
            d[blk.row, blk.col] = big
        d[r, s + r] = diag
        kappa[s:e] = d.argmin(1)
        dist[s:e] = d[r, kappa[s:e]]
    return kappa, dist


#: first-neighbour searches by name, each ``(x, metric, cannot, diag, big) -> (kappa, dist)`` as
#: :func:`first_neighbours`: FINCH and C1C take one by name (their ``search`` parameter), so an
#: approximate search (bench/cluster.py registers HNSW) is one function plus one
#: :func:`register_search` call, never a patch of this module
SEARCHES: dict[str, Callable] = {"exact": first_neighbours}


def register_search(name: str, search: Callable) -> Callable:
    SEARCHES[name] = search
    return search


def get_search(name: str) -> Callable:
    try:
        return SEARCHES[name]
    except KeyError:
        raise ValueError(f"unknown neighbour search {name!r}; choose from {sorted(SEARCHES)}") \
            from None


def components(n: int, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels (N,) and count of the connected components of the edges (i, j) over n nodes;
    labels numbered in the order of each component's lowest node (as scipy, as the reference)."""
    g = sp.csr_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    count, labels = connected_components(g, directed=True, connection="weak")
    return labels.astype(np.int64), int(count)


def mutual(kappa: np.ndarray) -> np.ndarray:
    """(N,) bool: i and kappa(i) are each other's first neighbour (weight 2 in (P+I)(P+I)^T)."""
    return (kappa[kappa] == np.arange(len(kappa))) & (kappa != np.arange(len(kappa)))


def _groups(kappa: np.ndarray, among: np.ndarray):
    """In-neighbour groups {j in among: kappa(j) = k}: (sorted members, start offsets, keys)."""
    order = among[np.argsort(kappa[among], kind="stable")]
    keys = kappa[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(order) else order
    return order, starts, keys


def first_neighbour_clusters(kappa: np.ndarray, dist: np.ndarray, cap: float | None = None,
                             x: np.ndarray | None = None, metric: str = "cosine",
                             cannot: sp.csr_matrix | None = None, weighted: bool = True,
                             big: float = 1000.0):
    """Components of the first-neighbour graph, edges longer than ``cap`` deleted.

    ``weighted`` (the reference): a mutual pair's length counts twice against the cap. Then a
    shared-neighbour edge (i, j), kappa(i) = kappa(j) = k, can survive where the mutual edge
    (i, k) is cut, so those edges are added for such i (O(g E) each for k's group g; ``x``
    needed). Without weights the kappa edges alone give the components.
    """
    n = len(kappa)
    own = kappa != np.arange(n)
    w = np.where(mutual(kappa), 2.0, 1.0) if weighted else np.ones(n)
    keep = own if cap is None else own & (w * dist <= cap)
    src, dst = [np.flatnonzero(keep)], [kappa[keep]]
    if cap is not None and weighted:
        cut = np.flatnonzero(own & (w * dist > cap) & (dist <= cap))
        if len(cut):
            order, starts, keys = _groups(kappa, np.flatnonzero(own))
            ends = np.r_[starts[1:], len(order)]
            where = {int(k): (a, b) for k, a, b in zip(keys[starts], starts, ends)}
            for i in cut:
                a, b = where[int(kappa[i])]
                g = order[a:b][order[a:b] != i]
                if len(g):
                    d = rowwise(x, np.full(len(g), i), g, metric, cannot, big)
                    ok = g[d <= cap]
                    src.append(np.full(len(ok), i))
                    dst.append(ok)
    return components(n, np.concatenate(src), np.concatenate(dst))


def longest_edge(x: np.ndarray, kappa: np.ndarray, dist: np.ndarray, metric: str,
                 cannot: sp.csr_matrix | None = None, big: float = 1000.0,
                 weighted: bool = True) -> float:
    """Longest edge of the first-neighbour graph: kappa edges (mutual ones doubled when
    ``weighted``) and pairs sharing a first neighbour (lengths with cannot-linked pairs at
    ``big``). Group pairs in blocks."""
    n = len(kappa)
    own = kappa != np.arange(n)
    w = np.where(mutual(kappa), 2.0, 1.0) if weighted else np.ones(n)
    best = float((w * dist)[own].max()) if own.any() else 0.0
    order, starts, _ = _groups(kappa, np.flatnonzero(own))
    for group in np.split(order, starts[1:]):
        if len(group) < 2:
            continue
        rows = max(1, BLOCK_BYTES // (8 * len(group)))
        for s in range(0, len(group), rows):
            d = pairwise(x[group[s:s + rows]], x[group], metric)
            if cannot is not None:
                blk = cannot[group[s:s + rows]][:, group].tocoo()
                d[blk.row, blk.col] = big
            r = np.arange(d.shape[0])
            d[r, s + r] = -np.inf
            best = max(best, float(d.max()))
    return best


def cluster_means(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(M, E) mean of the original points of each label 0..M-1. O(N E)."""
    m = int(labels.max()) + 1
    onehot = sp.csr_matrix((np.ones(len(labels)), (labels, np.arange(len(labels)))),
                           shape=(m, len(labels)))
    return (onehot @ x) / np.bincount(labels, minlength=m)[:, None]


def relabel(labels: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Point labels after the clusters (nodes) ``labels`` were grouped into ``u``."""
    return u[labels]


def merge_closest(x: np.ndarray, labels: np.ndarray, metric: str,
                  cannot: sp.csr_matrix | None = None, big: float = 1000.0,
                  search: Callable = first_neighbours):
    """One ``req_clust`` step: merge the closest pair of cluster means (the two smallest
    adjacency entries, a mutual first-neighbour pair). -> (node labels u, min distance)."""
    means = cluster_means(x, labels)
    kappa, dist = search(means, metric, cannot, diag=np.inf if cannot is None else big, big=big)
    own = kappa != np.arange(len(kappa))
    i = int(np.flatnonzero(own)[np.argmin(dist[own])])
    u, _ = components(len(means), np.array([i]), kappa[[i]])
    return u, float(dist[i])


def finch(data: np.ndarray, metric: str = "cosine", ensure_early_exit: bool = True,
          req_clust: int | None = None, weighted: bool = True,
          search: Callable = first_neighbours) -> Result:
    """FINCH partitions of ``data`` (N, E); see the module docstring. ``weighted=False`` uses
    plain edge lengths for the cap (methods.md's wording) instead of the reference's.
    ``search``: the first-neighbour search (:data:`SEARCHES`)."""
    x = _prepare(data, metric)
    kappa, dist = search(x, metric)
    labels, count = first_neighbour_clusters(kappa, dist)
    cap = (longest_edge(x, kappa, dist, metric, weighted=weighted)
           if ensure_early_exit and len(x) > 2 else None)
    parts, counts = [labels], [count]
    while count > 1:
        means = cluster_means(x, labels)
        kappa, dist = search(means, metric)
        u, new_count = first_neighbour_clusters(kappa, dist, cap, means, metric, weighted=weighted)
        step = record_partition(labels, u, new_count, parts, counts)
        if step is None:
            break
        labels, count = step
        if counts[-2] - count == 1:
            break
    req = None
    if req_clust is not None:
        req = required_clusters(x, np.column_stack(parts), counts, req_clust, metric, search)
    return Result(np.column_stack(parts), counts, req)


def record_partition(labels: np.ndarray, u: np.ndarray, new_count: int, parts: list,
                     counts: list) -> tuple[np.ndarray, int] | None:
    """FINCH's and C1C's step after a round of merges (``u``: the new node labels, ``new_count``
    clusters): None when the round merged nothing or everything (the last partition stands),
    else the new point labels and count, appended to ``parts`` and ``counts``."""
    if new_count == 1 or counts[-1] - new_count < 1:
        return None
    labels = relabel(labels, u)
    parts.append(labels)
    counts.append(new_count)
    return labels, new_count


def required_clusters(x, partitions, counts, req_clust, metric,
                      search: Callable = first_neighbours) -> np.ndarray:
    """Labels with exactly ``req_clust`` clusters: a kept partition if one has that count,
    else merge-one-pair steps from the last partition with more clusters."""
    if req_clust in counts:
        return partitions[:, counts.index(req_clust)]
    above = [i for i, c in enumerate(counts) if c >= req_clust]
    if not above or req_clust < 1:
        raise ValueError(f"req_clust={req_clust} exceeds every partition's count {counts}")
    labels = partitions[:, above[-1]]
    for _ in range(counts[above[-1]] - req_clust):
        u, _ = merge_closest(x, labels, metric, search=search)
        labels = relabel(labels, u)
    return labels
