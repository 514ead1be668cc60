"""Miners turn one title's face tracks into self-supervision (pytorch-metric-learning style).

``BaseMiner.mine`` validates the track set once; a miner writes one method, ``_mine``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property

import numpy as np


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


@dataclass(frozen=True)
class TrackSet:
    """The tracks of one title.

    frame_idx  list of T arrays (n_t,) int, strictly increasing
    embeddings list of T arrays (n_t, D) float32, unit-norm rows
    is_valid   (T,) bool; invalid tracks take part in no constraint
    """
    frame_idx: list
    embeddings: list
    is_valid: np.ndarray

    def __len__(self) -> int:
        return len(self.frame_idx)

    @cached_property
    def mean_embeddings(self) -> np.ndarray:
        """(T, D) L2-normalised mean of each track's faces."""
        if not len(self):
            return np.zeros((0, 0), np.float32)
        return l2_normalize(np.stack([e.mean(axis=0) for e in self.embeddings]))


class BaseMiner(ABC):
    def mine(self, tracks: TrackSet, **context):
        self.validate(tracks)
        return self._mine(tracks, **context)

    @staticmethod
    def validate(tracks: TrackSet) -> None:
        if not (len(tracks.frame_idx) == len(tracks.embeddings) == len(tracks.is_valid)):
            raise ValueError("frame_idx, embeddings and is_valid must describe the same tracks")
        dims = {e.shape[1] for e in tracks.embeddings if e.ndim == 2}
        if len(dims) > 1:
            raise ValueError(f"tracks have different embedding dims {dims}")
        for t, (f, e) in enumerate(zip(tracks.frame_idx, tracks.embeddings)):
            if e.ndim != 2 or len(f) != len(e) or len(f) == 0:
                raise ValueError(f"track {t}: {len(f)} frames vs embeddings {e.shape}")
            if np.any(np.diff(f) <= 0):
                raise ValueError(f"track {t}: frames not strictly increasing")
            if not np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-3):
                raise ValueError(f"track {t}: embeddings are not unit-norm")

    @abstractmethod
    def _mine(self, tracks: TrackSet, **context): ...
