"""Confidence that a track is in the right cluster: a probability, calibrated on labelled real
footage, so a person reviewing ``cluster``'s output knows which tracks to check first.

A track is *right* when its cluster's majority person is its person and its person's largest
cluster is its cluster (so a wrong merge and a missed merge both count against it).

The score is the cosine between the track and its cluster's centroid (the normalised mean of the
unit track embeddings of the cluster; 1 for a singleton) in the title-adapted space of
:mod:`training.clustering.autocluster` (centred and whitened by the within-track covariance, whatever method
made the clusters): of the scores tried by ``bench/real_clusters.py`` (also a margin to the
nearest other cluster, cluster size, the cannot-link-calibrated height), it ranks wrong tracks
lowest on clips it was not fitted on. ``confidence = sigmoid(slope * score + bias)``, fitted by
logistic regression on the labelled real clips (:data:`CALIBRATION`; the reliability table in
docs/benchmarks.md is leave one clip out). O(T E).
"""
from __future__ import annotations

import numpy as np

from training.clustering.autocluster import unit

#: sigmoid(slope * centroid cosine + bias), fitted by bench/real_clusters.py on the real clips
CALIBRATION = dict(slope=4.0, bias=-1.48)


def centroid_cosine(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per track: cosine between its unit embedding and the normalised mean of the unit
    embeddings of its cluster (1 for a singleton). O(T E)."""
    x = unit(emb)
    labels = np.asarray(labels, np.int64)
    c = np.zeros((int(labels.max()) + 1 if len(labels) else 0, x.shape[1]))
    np.add.at(c, labels, x)
    return np.clip((x * unit(c)[labels]).sum(1), -1.0, 1.0)


def calibrate(score: np.ndarray, calibration: dict = CALIBRATION) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(calibration["slope"] * np.asarray(score) + calibration["bias"])))


def confidence(emb: np.ndarray, labels: np.ndarray, calibration: dict = CALIBRATION) -> np.ndarray:
    """(T,) calibrated probability that each track is in the right cluster; ``emb`` = the
    title-adapted track embeddings (``training.clustering.methods.auto_space``)."""
    if len(labels) == 0:
        return np.zeros(0)
    return calibrate(centroid_cosine(emb, labels), calibration)


def correct(identity: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) bool: the track's cluster's majority person is its person, and its person's largest
    cluster is its cluster (labelled tracks only)."""
    identity, labels = np.asarray(identity, object), np.asarray(labels)
    _, y = np.unique(identity.astype(str), return_inverse=True)
    _, c = np.unique(labels, return_inverse=True)
    table = np.zeros((y.max() + 1, c.max() + 1), np.int64)
    np.add.at(table, (y, c), 1)
    return (table[:, c].argmax(0) == y) & (table[y].argmax(1) == c)


def fit(score: np.ndarray, right: np.ndarray) -> dict:
    """:data:`CALIBRATION`'s form fitted by logistic regression of ``right`` on ``score``."""
    from sklearn.linear_model import LogisticRegression
    right = np.asarray(right, bool)
    if right.all() or not right.any():
        return dict(CALIBRATION)
    lr = LogisticRegression(C=1.0).fit(np.asarray(score, np.float64)[:, None], right)
    return dict(slope=float(lr.coef_[0, 0]), bias=float(lr.intercept_[0]))


def reliability(conf: np.ndarray, right: np.ndarray, edges=(0.0, 0.5, 0.7, 0.8, 0.9, 1.0)) -> list:
    """Rows (low, high, tracks, mean confidence, fraction right) per confidence bin."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf >= lo) & ((conf < hi) if hi < 1.0 else (conf <= hi))
        rows.append((lo, hi, int(m.sum()), float(conf[m].mean()) if m.any() else float("nan"),
                     float(right[m].mean()) if m.any() else float("nan")))
    return rows
