"""Clustering and verification metrics (methods.md 1.5 and section 7).

All functions take ``y`` (true identity per track) and ``c`` (predicted cluster per track),
arrays of any hashable labels, shape (N,).
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def _contingency(y, c) -> np.ndarray:
    _, yi = np.unique(np.asarray(y), return_inverse=True)
    _, ci = np.unique(np.asarray(c), return_inverse=True)
    table = np.zeros((yi.max() + 1, ci.max() + 1), np.int64)
    np.add.at(table, (yi, ci), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def nmi(y, c) -> float:
    """2 I(Y; C) / (H(Y) + H(C)), log2 (BCL's arithmetic normalisation); 1 when both are trivial."""
    t = _contingency(y, c)
    n = t.sum()
    h_y, h_c = _entropy(t.sum(1)), _entropy(t.sum(0))
    if h_y + h_c == 0:
        return 1.0
    p = t / n
    outer = np.outer(t.sum(1), t.sum(0)) / n ** 2
    nz = p > 0
    mi = float((p[nz] * np.log2(p[nz] / outer[nz])).sum())
    return 2 * mi / (h_y + h_c)


def wcp(y, c) -> float:
    """Weighted cluster purity: sum over clusters of the majority identity count, over N."""
    t = _contingency(y, c)
    return float(t.max(axis=0).sum() / t.sum())


def bcubed(y, c) -> tuple[float, float, float]:
    """B-cubed precision, recall and F1 (harmonic mean of the averaged P and R)."""
    t = _contingency(y, c).astype(np.float64)
    n = t.sum()
    precision = float((t ** 2 / t.sum(0, keepdims=True)).sum() / n)
    recall = float((t ** 2 / t.sum(1, keepdims=True)).sum() / n)
    return precision, recall, 2 * precision * recall / (precision + recall)


def overclustering_index(y, c) -> float:
    """Mean over identities of the number of predicted clusters holding its tracks."""
    return float((_contingency(y, c) > 0).sum(1).mean())


def tpr_at_fpr(emb: np.ndarray, y, fpr: float = 0.1, groups=None) -> float:
    """Track-pair verification: highest TPR with FPR <= ``fpr`` with cosine similarity of (N, E) embeddings.

    Pairs are taken within each group (title) when ``groups`` is given. NaN if a class of
    pairs is empty.
    """
    y = np.asarray(y)
    groups = np.zeros(len(y)) if groups is None else np.asarray(groups)
    scores, same = [], []
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
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
