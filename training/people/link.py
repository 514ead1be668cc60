"""Linking title clusters into people across a corpus: no K, ids that stay.

The unit of linking is a *title cluster*: the tracks one title's own K-free clustering put
together (``auto`` by default), which already used that title's cannot-links. Across titles a
unit is one row: the sum of its tracks' unit embeddings (its centroid is that sum normalised)
and the title it comes from. Two rules keep the result safe at corpus scale:

* **One unit per title per person.** Two clusters of one title were judged different people by
  the title's own clustering (and co-occurring tracks never share a cluster), so the corpus step
  never joins them: every title-level cannot-link holds, and look-alikes inside one title stay
  apart.
* **Centroid linkage with a calibrated cut.** Candidate pairs come from a k-nearest-neighbour
  search (faiss: exact inner product up to :data:`EXACT_LIMIT` rows, HNSW above); pairs are
  taken in descending similarity and two groups merge only if the similarity of their *current
  centroids* (weighted by tracks) is at least ``tau`` and they share no title. The centroid
  check is what stops single-linkage chaining (A~B, B~C, so A=C) that collapses a large corpus.
  ``tau`` comes from the corpus's own negatives (:func:`calibrate`).

``assign`` puts new units onto existing people (incremental builds: an existing person's id
never changes; its prototype only gains members); ``group`` clusters what is left into new
people. Both are deterministic: ties break by row order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harvest.vectors import l2_normalize

EXACT_LIMIT = 100_000       # database rows up to which the k-NN search is exact (IndexFlatIP):
                            # at 63K units exact took 9.7 s, HNSW 13.4 s (bench/people.py)
DEFAULTS = dict(quantile=0.99, floor=0.35, prior=0.5, prior_weight=20, k=10,
                hnsw_m=32, ef_search=128, index="auto")


def unit(x: np.ndarray) -> np.ndarray:
    """Unit rows in float32 (``harvest.vectors.l2_normalize``)."""
    return l2_normalize(x)


def calibrate(negatives: np.ndarray, quantile: float = 0.99, floor: float = 0.35,
              prior: float = 0.5, prior_weight: float = 20, **_) -> float:
    """The cross-title cut: the ``quantile`` of the similarities between title clusters known
    to be different people (co-occurring clusters of one title), blended with ``prior`` as
    ``prior_weight`` pseudo-pairs when there are few, never below ``floor``. Across a corpus
    a unit is compared with many people, so the cut sits high in the negatives' tail."""
    negatives = np.asarray(negatives, np.float64)
    n = len(negatives)
    q = float(np.quantile(negatives, quantile)) if n else prior
    return float(max((n * q + prior_weight * prior) / (n + prior_weight), floor))


def knn(database: np.ndarray, queries: np.ndarray, k: int, index: str = "auto",
        hnsw_m: int = 32, ef_search: int = 128, **_) -> tuple[np.ndarray, np.ndarray]:
    """(similarities (Q, k), rows (Q, k); -1 where fewer than k) of the ``k`` most similar unit
    rows of ``database`` for each unit query: inner product, exact up to :data:`EXACT_LIMIT`
    rows (or ``index="exact"``), else faiss HNSW (``index="hnsw"``)."""
    import faiss
    database = np.ascontiguousarray(database, np.float32)
    queries = np.ascontiguousarray(queries, np.float32)
    k = int(min(k, len(database)))
    if k == 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    dim = database.shape[1]
    exact = index == "exact" or (index == "auto" and len(database) <= EXACT_LIMIT)
    if exact:
        ix = faiss.IndexFlatIP(dim)
    else:
        ix = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        ix.hnsw.efSearch = max(ef_search, k)
    ix.add(database)
    sims, rows = ix.search(queries, k)
    return sims, rows.astype(np.int64)


@dataclass
class Units:
    """Title clusters to link: ``sums`` (U, D) sums of their tracks' unit embeddings,
    ``weights`` (U,) track counts, ``titles`` (U,) int title codes."""
    sums: np.ndarray
    weights: np.ndarray
    titles: np.ndarray

    def __len__(self) -> int:
        return len(self.weights)

    @property
    def centroids(self) -> np.ndarray:
        return unit(self.sums)


def _candidates(sims: np.ndarray, rows: np.ndarray, tau: float, self_rows=None):
    """(query, row, sim) triples with sim >= tau, sorted by descending sim, then query, row."""
    q = np.repeat(np.arange(len(sims)), sims.shape[1])
    r, s = rows.ravel(), sims.ravel()
    ok = (r >= 0) & (s >= tau)
    if self_rows is not None:
        ok &= r != q
    q, r, s = q[ok], r[ok], s[ok]
    order = np.lexsort((r, q, -s))
    return q[order], r[order], s[order]


def assign(people_sums: np.ndarray, people_titles: list[set], new: Units, tau: float,
           **params) -> tuple[np.ndarray, np.ndarray]:
    """Put each new unit on an existing person (row of ``people_sums``), or -1: candidates by
    similarity to the people's centroids, best first; a person takes at most one unit per title
    (``people_titles``: the title codes each already has). -> (person row or -1, similarity)."""
    p = {**DEFAULTS, **params}
    out = np.full(len(new), -1, np.int64)
    sim_out = np.zeros(len(new), np.float32)
    if len(people_sums) == 0 or len(new) == 0:
        return out, sim_out
    sims, rows = knn(unit(people_sums), new.centroids, p["k"], p["index"], p["hnsw_m"],
                     p["ef_search"])
    taken = {(int(r), int(t)) for r, ts in enumerate(people_titles) for t in ts}
    for q, r, s in zip(*_candidates(sims, rows, tau)):
        key = (int(r), int(new.titles[q]))
        if out[q] >= 0 or key in taken:
            continue
        out[q], sim_out[q] = r, s
        taken.add(key)
    return out, sim_out


def group(units: Units, tau: float, **params) -> tuple[np.ndarray, np.ndarray]:
    """Cluster units into people (module doc): -> ((U,) group labels 0..G-1 numbered by first
    unit, (U,) similarity of each unit to its group's final centroid)."""
    p = {**DEFAULTS, **params}
    n = len(units)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    cent = units.centroids
    sims, rows = knn(cent, cent, p["k"] + 1, p["index"], p["hnsw_m"], p["ef_search"])
    parent = np.arange(n)
    sums = np.asarray(units.sums, np.float64).copy()
    titles = [{int(t)} for t in units.titles]

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    for q, r, s in zip(*_candidates(sims, rows, tau, self_rows=True)):
        a, b = find(int(q)), find(int(r))
        if a == b or not titles[a].isdisjoint(titles[b]):
            continue
        ca, cb = sums[a], sums[b]
        if float(ca @ cb) / max(np.linalg.norm(ca) * np.linalg.norm(cb), 1e-12) < tau:
            continue
        if len(titles[a]) < len(titles[b]):
            a, b = b, a
        parent[b] = a
        sums[a] += sums[b]
        titles[a] |= titles[b]
        titles[b] = set()
    roots = np.array([find(i) for i in range(n)])
    _, first, labels = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))            # groups numbered by their first unit
    labels = rank[labels]
    centre = unit(sums[roots])
    return labels.astype(np.int64), (centre * cent).sum(1).astype(np.float32)


def link(people_sums: np.ndarray, people_titles: list[set], new: Units, tau: float,
         **params) -> tuple[np.ndarray, np.ndarray, int]:
    """Assign new units to existing people, group the rest into new people. -> ((U,) person row:
    existing rows 0..M-1, new people M.. numbered by their first unit; (U,) similarity;
    the number of new people)."""
    rows, sims = assign(people_sums, people_titles, new, tau, **params)
    rest = np.flatnonzero(rows < 0)
    sub = Units(new.sums[rest], new.weights[rest], new.titles[rest])
    labels, gsims = group(sub, tau, **params)
    rows[rest] = len(people_sums) + labels
    sims[rest] = gsims
    return rows, sims, int(labels.max() + 1) if len(labels) else 0
