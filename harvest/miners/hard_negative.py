"""Hard negative: the cannot-link track whose mean embedding is nearest the anchor tracklet."""
from __future__ import annotations

import numpy as np


def nearest_cannot_linked(means: np.ndarray, anchors: np.ndarray, cannot_link: list) -> np.ndarray:
    """means (T, D) unit-norm track means, anchors (T, D), cannot_link: per track a list of
    track indices -> (T,) int64 nearest cannot-linked track (first on ties), -1 where none.
    O(T * D) memory: one track's neighbours at a time."""
    out = np.full(len(cannot_link), -1, np.int64)
    for t, others in enumerate(cannot_link):
        if len(others):
            d = np.linalg.norm(means[others] - anchors[t], axis=1)
            out[t] = others[int(np.argmin(d))]
    return out
