"""Whole-title definitions of the Multi-Face miners: the brute-force references the streamed
miners of ``harvest.miners`` are tested against.

They hold a whole title's faces at once (a ``TrackSet``), which the pipeline never does: it mines
each track's tracklets when the track closes and the title's cannot-links and hard negatives from
per-track summaries (``harvest.title.tracks.TitleTracker``). So these live with the tests, not in the
package.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from itertools import combinations

import numpy as np

from harvest.miners import Tracklets, mine_tracklets, nearest_cannot_linked
from harvest.vectors import l2_normalize


@dataclass(frozen=True)
class TrackSet:
    """The tracks of one title, checked on construction.

    frame_idx  list of T arrays (n_t,) int, strictly increasing
    embeddings list of T arrays (n_t, D) float32, unit-norm rows
    is_valid   (T,) bool; invalid tracks take part in no constraint
    """
    frame_idx: list
    embeddings: list
    is_valid: np.ndarray

    def __post_init__(self):
        if not (len(self.frame_idx) == len(self.embeddings) == len(self.is_valid)):
            raise ValueError("frame_idx, embeddings and is_valid must describe the same tracks")
        for t, (f, e) in enumerate(zip(self.frame_idx, self.embeddings)):
            if e.ndim != 2 or len(f) != len(e) or len(f) == 0:
                raise ValueError(f"track {t}: {len(f)} frames vs embeddings {e.shape}")
            if np.any(np.diff(f) <= 0):
                raise ValueError(f"track {t}: frames not strictly increasing")
            if not np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-3):
                raise ValueError(f"track {t}: embeddings are not unit-norm")

    def __len__(self) -> int:
        return len(self.frame_idx)

    @cached_property
    def mean_embeddings(self) -> np.ndarray:
        """(T, D) L2-normalised mean of each track's faces."""
        if not len(self):
            return np.zeros((0, 0), np.float32)
        return l2_normalize(np.stack([e.mean(axis=0) for e in self.embeddings]))


def cannot_link_pairs(tracks: TrackSet) -> np.ndarray:
    """-> (P, 2) int64 pairs (i, j), i < j, of valid tracks sharing at least one frame, sorted,
    without duplicates: a title-wide frame index."""
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


def tracklets(tracks: TrackSet, n: int = 3) -> list[Tracklets]:
    """One Tracklets per track (invalid tracks too)."""
    return [mine_tracklets(e, n) for e in tracks.embeddings]


def hard_negatives(tracks: TrackSet, cannot_link: list, anchors: np.ndarray) -> np.ndarray:
    """(T,) the cannot-linked track whose mean is nearest each track's anchor, -1 where none."""
    return nearest_cannot_linked(tracks.mean_embeddings, anchors, cannot_link)
