"""Cannot-link: two valid tracks that appear in the same frame are different people."""
from __future__ import annotations

from collections import defaultdict
from itertools import combinations

import numpy as np

from harvest.miners.base import BaseMiner, TrackSet


class CannotLinkMiner(BaseMiner):
    def _mine(self, tracks: TrackSet) -> np.ndarray:
        """-> (P, 2) int64 pairs (i, j), i < j, of valid tracks sharing at least one frame,
        sorted, without duplicates."""
        by_frame: dict[int, list[int]] = defaultdict(list)
        for t, frames in enumerate(tracks.frame_idx):
            if tracks.is_valid[t]:
                for f in frames:
                    by_frame[int(f)].append(t)
        pairs = {p for ts in by_frame.values() if len(ts) > 1 for p in combinations(sorted(ts), 2)}
        return np.array(sorted(pairs), np.int64).reshape(-1, 2)


def adjacency(pairs: np.ndarray, n_tracks: int) -> list[list[int]]:
    """(P, 2) pairs -> per track, the sorted list of tracks it is cannot-linked to."""
    nbrs: list[list[int]] = [[] for _ in range(n_tracks)]
    for i, j in pairs:
        nbrs[i].append(int(j))
        nbrs[j].append(int(i))
    return [sorted(n) for n in nbrs]


def valid_links(partners: list, is_valid: np.ndarray) -> list[list[int]]:
    """Per track, the co-occurring tracks (``partners``: per track an iterable of the tracks it
    shares a frame with, e.g. from ``harvest.tracking.TrackLinker``) restricted to valid tracks,
    sorted; [] for invalid tracks. Same result as ``adjacency(CannotLinkMiner().mine(...))``
    without a title-wide frame index."""
    return [sorted(int(o) for o in p if is_valid[o]) if is_valid[t] else []
            for t, p in enumerate(partners)]
