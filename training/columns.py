"""The shard columns training reads: the names are the contract's own
(``harvest.dataset.schema``, their one home), gathered here with the column sets training uses.
"""
from __future__ import annotations

from harvest.dataset.schema import (BOXES, CANNOT_LINK, CROP_POSITIONS, CROPS,  # noqa: F401
                                    EMBEDDINGS, FRAME_IDX, HARD_NEGATIVE, IS_VALID,
                                    MEAN_EMBEDDING, SHOT_ID, TITLE_ID, TRACK_ID, TRACKLETS)

# Columns training reads (evaluation adds FRAME_IDX and BOXES for box-level labels).
TRAIN_COLUMNS = (TITLE_ID, TRACK_ID, FRAME_IDX, MEAN_EMBEDDING, TRACKLETS, CANNOT_LINK,
                 HARD_NEGATIVE, IS_VALID)
