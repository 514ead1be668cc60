"""Cannot-link: two valid tracks that appear in the same frame are different people."""
from __future__ import annotations

import numpy as np


def valid_links(partners: list, is_valid: np.ndarray) -> list[list[int]]:
    """Per track, the co-occurring tracks (``partners``: per track an iterable of the tracks it
    shares a frame with, e.g. from ``harvest.title.tracking.TrackLinker``) restricted to valid tracks,
    sorted; [] for invalid tracks. The same links as the whole-title definition (every pair of
    valid tracks sharing a frame) without a title-wide frame index."""
    return [sorted(int(o) for o in p if is_valid[o]) if is_valid[t] else []
            for t, p in enumerate(partners)]
