"""Shard column names used by training, checked against the contract in ``harvest.dataset.schema``.

Every name is validated against ``harvest.dataset.schema.shard_schema`` at import time, so a rename in
the contract fails here loudly instead of silently reading a missing column.
"""
from __future__ import annotations

from harvest.dataset.schema import shard_schema

_CONTRACT = frozenset(shard_schema(1).names)


def _col(name: str) -> str:
    if name not in _CONTRACT:
        raise KeyError(f"column {name!r} is not in harvest.dataset.schema.shard_schema")
    return name


TITLE_ID = _col("title_id")
TRACK_ID = _col("track_id")
SHOT_ID = _col("shot_id")
FRAME_IDX = _col("frame_idx")
BOXES = _col("boxes")
MEAN_EMBEDDING = _col("mean_embedding")
TRACKLETS = _col("tracklets")
CANNOT_LINK = _col("cannot_link")
HARD_NEGATIVE = _col("hard_negative")
IS_VALID = _col("is_valid")
EMBEDDINGS = _col("embeddings")
CROPS = _col("crops")
CROP_POSITIONS = _col("crop_positions")

# Columns training reads (evaluation adds FRAME_IDX and BOXES for box-level labels).
TRAIN_COLUMNS = (TITLE_ID, TRACK_ID, FRAME_IDX, MEAN_EMBEDDING, TRACKLETS, CANNOT_LINK,
                 HARD_NEGATIVE, IS_VALID)
