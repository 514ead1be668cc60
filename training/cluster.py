"""Clustering of track embeddings: HAC with known K, HAC with a distance threshold, affinity
propagation. Embeddings (N, E) are L2-normalised first; HAC works on squared Euclidean
distances (= 2 - 2 cos), as BCL's stopping rule (methods.md 1.5) is defined there.
"""
from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist
from sklearn.cluster import AffinityPropagation

METHODS = ("hac-k", "hac-threshold", "ap")
LINKAGES = ("single", "complete", "average", "weighted", "centroid", "median", "ward")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dendrogram(emb: np.ndarray, method: str = "complete") -> np.ndarray:
    """Linkage matrix of the squared Euclidean distances of unit-normalised (N, E) rows."""
    if method not in LINKAGES:
        raise ValueError(f"unknown linkage {method!r}")
    return linkage(pdist(_unit(emb), "sqeuclidean"), method=method)


def hac_k(emb: np.ndarray, k: int, method: str = "average") -> np.ndarray:
    """(N,) cluster ids, exactly min(k, N) clusters."""
    if len(emb) == 1:
        return np.ones(1, int)
    return fcluster(dendrogram(emb, method), t=min(k, len(emb)), criterion="maxclust")


def hac_threshold(emb: np.ndarray, threshold: float, method: str = "complete") -> np.ndarray:
    """(N,) cluster ids; merging stops above ``threshold`` (squared Euclidean; BCL: 4b)."""
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
