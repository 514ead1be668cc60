"""C1C: FINCH with video constraints (Kalogeiton & Zisserman, BMVC 2021), methods.md 6.2,
following the reference module's semantics, on the graph pieces of :mod:`training.clustering.finch`.

* cannot-links (pairs of points) set their distance to 1000 in every first-neighbour search
  (the diagonal too), and are carried to the cluster level after each partition (pairs that
  fall inside one cluster dropped);
* must-links, when given, *replace* the partition-0 graph (partition 0 = their components, e.g.
  the tracks) and the merge cap is the longest must-linked pair; without them partition 0 is
  FINCH's and the cap its longest edge. The cap is always on;
* after each later round, a cannot-linked pair left in one cluster (a first-neighbour chain) is
  split by a minimum s-t cut over that cluster's edges, capacity 1.01 max length - length, and
  the sink side becomes a new cluster; repeated until no pair is violated. Partition 0 is not
  repaired (as the reference): a chain of first neighbours may join a cannot-linked pair there
  unless must-links define partition 0 (methods.md 6.3, last vector);
* ``req_clust``: FINCH's merge-one-pair steps with cannot-linked pairs at 1000; when every
  candidate is cannot-linked the constraints are dropped for the remaining merges.

Edge lengths are weighted as the reference's by default (see :mod:`training.clustering.finch`). Differences
from the reference: exact blocked first neighbours at any size, float64; violated pairs are
repaired in sorted (i, j) order, orientation kept (the reference walks a Python set, whose order
is an accident of hashing). The repair builds the violating
cluster's pairwise distances: O(c^2 E) for a cluster of c nodes, only when violated.

:func:`c1c_tracks` runs it on a title's faces: partition 0 = the tracks (must-links listed as a
chain of consecutive faces, linear in faces), the merge cap = the longest distance between two
faces of one track (every pair of a track's faces is must-linked in the reference's sense;
measured on at most :data:`DIAMETER_FACES` faces per track), cannot-links join one face of each
pair of co-occurring tracks (the shard's ``cannot_link`` column).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import networkx as nx
import numpy as np
import scipy.sparse as sp

from training.clustering.finch import (Result, _prepare, cluster_means, components,
                                       first_neighbour_clusters, first_neighbours, longest_edge,
                                       merge_closest, pairwise, record_partition, relabel, rowwise)

BIG = 1000.0


def _pairs(pairs, n: int) -> np.ndarray:
    p = np.asarray([] if pairs is None else pairs, np.int64).reshape(-1, 2)
    if len(p) and (p.min() < 0 or p.max() >= n):
        raise ValueError("constraint index out of range")
    return p


def _symmetric(pairs: np.ndarray, n: int) -> sp.csr_matrix | None:
    if len(pairs) == 0:
        return None
    m = sp.csr_matrix((np.ones(len(pairs), bool), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return (m + m.T).astype(bool).tocsr()


def _carry(pairs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Cannot-links rewritten as node pairs of the new clusters, orientation kept (the first
    node is the cut's source, the second's side becomes the new cluster); pairs inside one
    cluster dropped; sorted."""
    q = u[pairs]
    q = q[q[:, 0] != q[:, 1]]
    return np.unique(q, axis=0) if len(q) else q


def _cut_violations(x, u, count, kappa, cap, metric, cannot_pairs, cannot, weighted):
    """Split every cluster holding a cannot-linked pair by minimum s-t cuts (6.2 step 3)."""
    u = u.copy()
    pairs = cannot_pairs[np.lexsort((cannot_pairs[:, 1], cannot_pairs[:, 0]))]
    while True:
        bad = pairs[u[pairs[:, 0]] == u[pairs[:, 1]]]
        if len(bad) == 0:
            return u, count
        i, j = (int(v) for v in bad[0])
        idx = np.flatnonzero(u == u[i])
        d = pairwise(x[idx], x[idx], metric)
        d[cannot[idx][:, idx].toarray()] = BIG
        k = kappa[idx]
        to_k, from_k = idx[None, :] == k[:, None], idx[:, None] == k[None, :]
        edge = to_k | from_k | (k[:, None] == k[None, :])
        np.fill_diagonal(edge, False)
        w = np.where(to_k & from_k, 2.0, 1.0) if weighted else 1.0
        edge &= w * d <= cap
        a, b = np.nonzero(np.triu(edge))
        top = 1.01 * d[a, b].max()
        g = nx.Graph()
        g.add_weighted_edges_from(((int(idx[p]), int(idx[q]), top - d[p, q]) for p, q in zip(a, b)),
                                  weight="capacity")
        _, (_, side_j) = nx.minimum_cut(g, i, j)
        u[list(side_j)] = count
        count += 1


def c1c(data: np.ndarray, must_link=None, cannot_link=None, metric: str = "euclidean",
        req_clust: int | None = None, weighted: bool = True, cap: float | None = None,
        search: Callable = first_neighbours) -> Result:
    """C1C partitions of ``data`` (N, E) under ``must_link`` / ``cannot_link`` (K, 2) index
    pairs; see the module docstring. Euclidean is the recommended metric (6.2). ``weighted``:
    edge lengths as the reference (a must-link listed in both directions, or a mutual first-
    neighbour pair, counts twice against the cap); False: plain lengths. ``cap``: the merge cap
    when the caller knows the longest must-linked pair without listing every pair (see
    :func:`c1c_tracks`); None: the longest listed must-link (FINCH's longest edge without them).
    ``search``: the first-neighbour search (``training.clustering.finch.SEARCHES``)."""
    x = _prepare(data, metric)
    n = len(x)
    ml, cl = _pairs(must_link, n), _pairs(cannot_link, n)
    cannot = _symmetric(cl, n)
    if len(ml):         # partition 0 = the must-link components: no point-level 1-NN search
        labels, count = components(n, ml[:, 0], ml[:, 1])
        pairs, times = np.unique(np.sort(ml, axis=1), axis=0, return_counts=True)
        d_ml = rowwise(x, pairs[:, 0], pairs[:, 1], metric, cannot, BIG)
        d_ml *= times if weighted else 1
        d_ml[pairs[:, 0] == pairs[:, 1]] = 0.0         # a self pair is no edge
        cap = float(d_ml.max()) if cap is None else float(cap)
    else:
        kappa, dist = search(x, metric, cannot, diag=BIG, big=BIG)
        labels, count = first_neighbour_clusters(kappa, dist)
        if cap is None:
            cap = longest_edge(x, kappa, dist, metric, cannot, BIG, weighted)
    parts, counts = [labels], [count]
    cl_k = _carry(cl, labels)
    history = [cl_k]
    while count > 1:
        means = cluster_means(x, labels)
        cannot_k = _symmetric(cl_k, count)
        kappa, dist = search(means, metric, cannot_k, diag=BIG, big=BIG)
        u, new_count = first_neighbour_clusters(kappa, dist, cap, means, metric, cannot_k,
                                                weighted, BIG)
        if len(cl_k):
            u, new_count = _cut_violations(means, u, new_count, kappa, cap, metric, cl_k, cannot_k,
                                           weighted)
        step = record_partition(labels, u, new_count, parts, counts)
        if step is None:
            break
        labels, count = step
        cl_k = _carry(cl_k, u)
        history.append(cl_k)
        if counts[-2] - count == 1:
            break
    partitions = np.column_stack(parts)
    req = None
    if req_clust is not None:
        req = _required(x, partitions, counts, history, req_clust, metric, search)
    return Result(partitions, counts, req)


def _required(x, partitions, counts, history, req_clust, metric,
              search: Callable = first_neighbours) -> np.ndarray:
    if req_clust in counts:
        return partitions[:, counts.index(req_clust)]
    above = [i for i, c in enumerate(counts) if c >= req_clust]
    if not above or req_clust < 1:
        raise ValueError(f"req_clust={req_clust} exceeds every partition's count {counts}")
    labels, pairs = partitions[:, above[-1]], history[above[-1]]
    for _ in range(counts[above[-1]] - req_clust):
        m = int(labels.max()) + 1
        cannot = _symmetric(pairs, m)
        u, d = merge_closest(x, labels, metric, cannot, BIG, search)
        if cannot is not None and d >= BIG:          # every merge violates: relax the rest
            pairs = pairs[:0]
            u, _ = merge_closest(x, labels, metric, search=search)
        labels = relabel(labels, u)
        pairs = _carry(pairs, u)
    return labels


def track_constraints(track_of_face: np.ndarray, track_ids: Sequence[int],
                      cannot_link: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Face-level (must_link, cannot_link) pairs from a title's tracks.

    ``track_of_face`` (F,) the row (0..T-1) of each face's track, faces of a track in time order;
    ``track_ids`` (T,) the shard's track ids and ``cannot_link[t]`` the track ids co-occurring
    with row t (ids outside ``track_ids``, e.g. invalid tracks, are ignored). Must-links chain
    consecutive faces of a track; a cannot-link joins the first faces of two tracks. O(F + links).
    """
    tof = np.asarray(track_of_face, np.int64)
    same = np.flatnonzero(tof[1:] == tof[:-1])
    must = np.column_stack([same, same + 1])
    first = np.full(len(track_ids), -1, np.int64)
    faces = np.arange(len(tof))
    first[tof[::-1]] = faces[::-1]
    row = {int(t): r for r, t in enumerate(track_ids)}
    cannot = [(first[r], first[row[int(o)]]) for r, links in enumerate(cannot_link)
              for o in links if int(o) in row and row[int(o)] > r]
    cannot = np.asarray(cannot, np.int64).reshape(-1, 2)
    if len(cannot) and (cannot < 0).any():
        raise ValueError("a cannot-linked track has no face")
    return must, cannot


#: faces per track the diameter is measured on (evenly spaced; all of a shorter track's faces)
DIAMETER_FACES = 256


def track_diameters(faces: np.ndarray, track_of_face: np.ndarray, metric: str = "euclidean",
                    max_faces: int = DIAMETER_FACES) -> np.ndarray:
    """(T,) the longest distance between two faces of each track (faces grouped by track, rows
    0..T-1): the longest must-linked pair when every pair of a track's faces is must-linked.

    Exact for tracks of at most ``max_faces`` faces; a longer track is measured on ``max_faces``
    evenly spaced faces (a lower bound), so the cost is O(F + T max_faces^2 E), linear in faces."""
    x = _prepare(faces, metric)
    tof = np.asarray(track_of_face, np.int64)
    n_tracks = int(tof.max()) + 1 if len(tof) else 0
    starts = np.searchsorted(tof, np.arange(n_tracks))
    ends = np.searchsorted(tof, np.arange(n_tracks), side="right")
    out = np.zeros(n_tracks)
    for t, (a, b) in enumerate(zip(starts, ends)):
        idx = np.arange(a, b) if b - a <= max_faces else \
            np.unique(np.linspace(a, b - 1, max_faces).round().astype(np.int64))
        if len(idx) > 1:
            out[t] = float(pairwise(x[idx], x[idx], metric).max())
    return out


CAPS = ("diameter", "chain")


def c1c_tracks(faces: np.ndarray, track_of_face: np.ndarray, track_ids: Sequence[int],
               cannot_link: Sequence[Sequence[int]], metric: str = "euclidean",
               req_clust: int | None = None, weighted: bool = True,
               cap: str = "diameter", search: Callable = first_neighbours) -> Result:
    """C1C on a title's face embeddings ``faces`` (F, E) with constraints from its tracks
    (:func:`track_constraints`). Partition 0 is the tracks; labels are per face.

    ``cap``: ``diameter`` (the reference's meaning: every pair of a track's faces is must-linked,
    so the merge cap is the longest distance between two faces of one track,
    :func:`track_diameters`); ``chain``: the longest step between consecutive faces (the
    must-links actually listed, a chain)."""
    if cap not in CAPS:
        raise ValueError(f"cap must be one of {CAPS}, not {cap!r}")
    must, cannot = track_constraints(track_of_face, track_ids, cannot_link)
    value = None
    if cap == "diameter" and len(faces):
        value = float(track_diameters(faces, track_of_face, metric).max())
    return c1c(faces, must, cannot, metric, req_clust, weighted, cap=value, search=search)
