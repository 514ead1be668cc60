"""Clustering and verification metrics (methods.md 1.5 and section 7).

All functions take ``y`` (true identity per track) and ``c`` (predicted cluster per track),
arrays of any hashable labels, shape (N,).
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from harvest.vectors import l2_normalize


def _cells(y, c) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero cells of the identity x cluster contingency table: (identity index, cluster
    index, count) per cell, then the identity and cluster sizes. O(N) memory: a dense table of
    a pooled corpus (identities x clusters) would not fit (6 GB at 1M tracks)."""
    _, yi = np.unique(np.asarray(y), return_inverse=True)
    _, ci = np.unique(np.asarray(c), return_inverse=True)
    yi, ci = yi.ravel().astype(np.int64), ci.ravel().astype(np.int64)
    if len(yi) == 0:
        z = np.zeros(0, np.int64)
        return z, z, z, z, z
    width = int(ci.max()) + 1
    cells, count = np.unique(yi * width + ci, return_counts=True)
    return cells // width, cells % width, count, np.bincount(yi), np.bincount(ci)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def nmi(y, c) -> float:
    """2 I(Y; C) / (H(Y) + H(C)), log2 (BCL's arithmetic normalisation); 1 when both are trivial."""
    yi, ci, n_ij, size_y, size_c = _cells(y, c)
    h_y, h_c = _entropy(size_y), _entropy(size_c)
    if h_y + h_c == 0:
        return 1.0
    n = n_ij.sum()
    mi = float((n_ij / n * np.log2(n_ij * n / (size_y[yi] * size_c[ci]))).sum())
    return 2 * mi / (h_y + h_c)


def wcp(y, c) -> float:
    """Weighted cluster purity: sum over clusters of the majority identity count, over N."""
    _, ci, n_ij, _, size_c = _cells(y, c)
    majority = np.zeros(len(size_c), np.int64)
    np.maximum.at(majority, ci, n_ij)
    return float(majority.sum() / max(n_ij.sum(), 1))


def bcubed(y, c) -> tuple[float, float, float]:
    """B-cubed precision, recall and F1 (harmonic mean of the averaged P and R)."""
    yi, ci, n_ij, size_y, size_c = _cells(y, c)
    n, sq = n_ij.sum(), n_ij.astype(np.float64) ** 2
    precision = float((sq / size_c[ci]).sum() / n)
    recall = float((sq / size_y[yi]).sum() / n)
    return precision, recall, 2 * precision * recall / (precision + recall)


def overclustering_index(y, c) -> float:
    """Mean over identities of the number of predicted clusters holding its tracks."""
    yi, _, _, size_y, _ = _cells(y, c)
    return float(np.bincount(yi, minlength=len(size_y)).mean())


def tpr_at_fpr(emb: np.ndarray, y, fpr: float = 0.1, groups=None) -> float:
    """Track-pair verification: highest TPR with FPR <= ``fpr`` with cosine similarity of (N, E) embeddings.

    Pairs are taken within each group (title) when ``groups`` is given. NaN if a class of
    pairs is empty.
    """
    y = np.asarray(y)
    groups = np.zeros(len(y)) if groups is None else np.asarray(groups)
    scores, same = [], []
    e = l2_normalize(emb, dtype=None)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        iu = np.triu_indices(len(idx), 1)
        scores.append((e[idx] @ e[idx].T)[iu])
        same.append((y[idx][:, None] == y[idx][None, :])[iu])
    scores, same = np.concatenate(scores), np.concatenate(same)
    if same.all() or not same.any():
        return float("nan")
    f, t, _ = skm.roc_curve(same, scores)
    return float(t[f <= fpr + 1e-12].max())   # best operating point with FPR <= fpr


def clustering_scores(y, c) -> dict[str, float]:
    """All label-based metrics of the issue's JSON (pair TPR is added by the evaluator)."""
    y, c = np.asarray(y), np.asarray(c)
    h, comp, v = skm.homogeneity_completeness_v_measure(y, c)
    p, r, f = bcubed(y, c)
    n_clusters, n_ids = len(np.unique(c)), len(np.unique(y))
    return dict(wcp=wcp(y, c), nmi=nmi(y, c), v_measure=float(v), homogeneity=float(h),
                completeness=float(comp), n_tracks=int(len(y)), n_clusters=n_clusters,
                n_identities=n_ids, pcr=n_clusters / n_ids, oci=overclustering_index(y, c),
                bcubed_precision=p, bcubed_recall=r, bcubed_f1=f)
