"""Build a title's shard table (schema in harvest.schema) from the pipeline's tracks."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from harvest.miners.base import l2_normalize
from harvest.quality import face_size
from harvest.schema import N_TRACKLETS, PIPELINE_VERSION, shard_schema, with_metadata


def _fixed(values: np.ndarray, width: int) -> pa.Array:
    """(n, width) float -> fixed_size_list<float32, width>."""
    flat = pa.array(np.ascontiguousarray(values, np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, width)


def _per_face(values: np.ndarray, members: list, width: int | None) -> pa.Array:
    """Ragged per-track lists of per-face values, gathered by members."""
    order = np.concatenate(members) if members else np.zeros(0, np.int64)
    offsets = pa.array(np.r_[0, np.cumsum([len(m) for m in members])].astype(np.int32))
    gathered = values[order]
    inner = pa.array(gathered.astype(np.float32)) if width is None else _fixed(gathered, width)
    return pa.ListArray.from_arrays(offsets, inner)


def build_shard_table(title_id: str, tracks, meta: dict) -> pa.Table:
    """tracks: harvest.pipeline.TitleTracks -> pa.Table with the shard schema and metadata."""
    faces, members = tracks.faces, tracks.members
    dim = int(faces.emb.shape[1])
    T = len(members)
    nulls = [tl.vectors is None for tl in tracks.tracklets]
    vectors = np.stack([np.zeros((N_TRACKLETS, dim), np.float32) if tl.vectors is None
                        else tl.vectors for tl in tracks.tracklets]) \
        if T else np.zeros((0, N_TRACKLETS, dim), np.float32)
    tracklets = pa.FixedSizeListArray.from_arrays(_fixed(vectors.reshape(-1, dim), dim),
                                                  N_TRACKLETS, mask=pa.array(nulls, pa.bool_()))
    frame_idx = pa.ListArray.from_arrays(
        pa.array(np.r_[0, np.cumsum([len(m) for m in members])].astype(np.int32)),
        pa.array(faces.frame_idx[np.concatenate(members)] if T else [], pa.int32()))
    means = l2_normalize(np.stack([faces.emb[m].mean(axis=0) for m in members])) if T \
        else np.zeros((0, dim), np.float32)
    hn = tracks.hard_negative
    columns = {
        "title_id": pa.array([title_id] * T, pa.string()),
        "track_id": pa.array(np.arange(T), pa.int64()),
        "shot_id": pa.array(tracks.shot_id, pa.int32()),
        "n_faces": pa.array([len(m) for m in members], pa.int32()),
        "frame_idx": frame_idx,
        "boxes": _per_face(faces.boxes, members, 4),
        "landmarks": _per_face(faces.kps.reshape(-1, 10), members, 10),
        "det_score": _per_face(faces.scores, members, None),
        "face_size": _per_face(face_size(faces.boxes), members, None),
        "blur": _per_face(faces.blur, members, None),
        "embeddings": _per_face(faces.emb, members, dim),
        "mean_embedding": _fixed(means, dim),
        "tracklets": tracklets,
        "tracklet_members": pa.array([tl.members for tl in tracks.tracklets],
                                     pa.list_(pa.list_(pa.int32()))),
        "cannot_link": pa.array([list(c) for c in tracks.cannot_link], pa.list_(pa.int64())),
        "hard_negative": pa.array([int(h) if h >= 0 else None for h in hn], pa.int64()),
        "track_quality": pa.array(tracks.quality, pa.float32()),
        "is_valid": pa.array([r is None for r in tracks.invalid_reason], pa.bool_()),
        "invalid_reason": pa.array(tracks.invalid_reason, pa.string()),
    }
    schema = with_metadata(shard_schema(dim), {**meta, "pipeline_version": PIPELINE_VERSION,
                                               "embedding_dim": dim})
    return pa.table(columns, schema=schema)
