"""Hard-positive tracklets inside a track (Multi-Face, section 3).

The anchor a and first positive p1 are the farthest pair of faces; each grows into its
k = floor(N / n) nearest remaining faces (taken faces leave the pool); every later positive is
built around the remaining face farthest from the anchor. Tracklet = L2-normalised mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harvest.miners.base import BaseMiner, TrackSet, l2_normalize


@dataclass(frozen=True)
class Tracklets:
    vectors: np.ndarray | None    # (n, D) unit-norm, or None when the track has < n faces
    members: list                 # n lists of face positions (ascending), or []


def mine_tracklets(emb: np.ndarray, n: int = 3) -> Tracklets:
    """emb (N, D) unit-norm faces of one track -> n tracklets."""
    N = len(emb)
    if N < n:
        return Tracklets(None, [])
    k = N // n
    dist = np.linalg.norm(emb[:, None, :] - emb[None, :, :], axis=-1)
    a, p1 = np.unravel_index(np.argmax(dist), dist.shape)
    pool = np.ones(N, bool)
    members = []
    for seed_i in range(n):
        if seed_i == 0:
            seed = a
        elif seed_i == 1 and pool[p1]:
            seed = p1
        else:
            seed = np.flatnonzero(pool)[np.argmax(dist[a, pool])]
        cand = np.flatnonzero(pool)
        take = cand[np.argsort(dist[seed, cand], kind="stable")[:k]]
        pool[take] = False
        members.append(sorted(int(i) for i in take))
    vectors = l2_normalize(np.stack([emb[m].mean(axis=0) for m in members]))
    return Tracklets(vectors, members)


class HardPositiveMiner(BaseMiner):
    def __init__(self, n_tracklets: int = 3):
        self.n_tracklets = n_tracklets

    def _mine(self, tracks: TrackSet) -> list[Tracklets]:
        """-> one Tracklets per track (invalid tracks too: they are cheap and useful to readers)."""
        return [mine_tracklets(e, self.n_tracklets) for e in tracks.embeddings]
