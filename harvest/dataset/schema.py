"""The shard and manifest contract: the one place where column names and types live.

A shard is one Parquet file per title, one row per face track. Readers (``training``,
``harvest validate``) import the names from here rather than spelling them out.

Each column's type is :func:`shard_schema`'s and its meaning :data:`COLUMN_DESCRIPTIONS`'s (the
dataset card prints both); docs/schema.md explains them at length, with shapes (N faces, M
interpolated frames, C crops, D the backend's embedding size).

Face crops live in the track's own row (not a side file), so a title stays one atomically
written shard. Which faces have a crop is the ``crops`` mode (file metadata, CROP_METADATA):
``none`` C = 0; ``all`` C = N; ``sample`` up to ``crops_per_track`` faces spread evenly over the
track plus the seed face of each tracklet (anchor a, p1, p2), so C <= crops_per_track + 3.

Row order: rows are written in ascending ``track_id``; track ids are 0..T-1 in order of the
tracks' first face (frame, then detection order inside the frame), so the same video and config
give the same shard bytes. Readers should still look tracks up by ``track_id`` (ids, not row
positions, are what ``cannot_link`` and ``hard_negative`` refer to). A takedown
(``harvest/dataset/takedown.py``, ``people remove``) removes rows without renumbering the others, so a
shard that had one may have gaps in its ids.
"""
from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

N_TRACKLETS = 3
JPEG_QUALITY = 90      # of the stored face crops
METADATA_KEY = b"harvest"

# Keys of the JSON object stored under METADATA_KEY in each shard's file metadata.
METADATA_FIELDS = (
    "title_id", "source_uri", "fps", "width", "height", "frame_count", "backend",
    "detector_file", "detector_sha256", "embedder_file", "embedder_sha256",
    "embedding_dim", "pipeline_version", "config_hash", "shot_boundaries",
)
# Optional keys (written by harvest run) that tell ``harvest validate`` which crops to expect.
CROP_METADATA = ("crops", "crops_per_track", "crop_size")


# The shard's column names: their one home (``shard_schema`` below, ``harvest validate``, and
# training through ``training/columns.py`` use these, never the strings).
TITLE_ID = "title_id"
TRACK_ID = "track_id"
SHOT_ID = "shot_id"
N_FACES = "n_faces"
FRAME_IDX = "frame_idx"
TIMESTAMPS = "timestamps"
BOXES = "boxes"
INTERP_FRAME_IDX = "interp_frame_idx"
INTERP_BOXES = "interp_boxes"
LANDMARKS = "landmarks"
DET_SCORE = "det_score"
FACE_SIZE = "face_size"
BLUR = "blur"
EMBEDDINGS = "embeddings"
MEAN_EMBEDDING = "mean_embedding"
TRACKLETS = "tracklets"
TRACKLET_MEMBERS = "tracklet_members"
CROPS = "crops"
CROP_POSITIONS = "crop_positions"
CANNOT_LINK = "cannot_link"
HARD_NEGATIVE = "hard_negative"
TRACK_QUALITY = "track_quality"
IS_VALID = "is_valid"
INVALID_REASON = "invalid_reason"


def vector_type(dim: int) -> pa.DataType:
    """A vector of ``dim`` float32 (a box, landmarks, an embedding). Its values are declared
    non-null: Parquet then stores one definition level less per value, which reads 19 % faster
    (an embedding column of a 1,400-track title, D = 512: 15.6 -> 12.6 ms)."""
    return pa.list_(pa.field("item", pa.float32(), nullable=False), dim)


def loose_type(t: pa.DataType) -> pa.DataType:
    """``t`` with every nested field nullable: what :func:`shard_schema` compares, so shards of
    pipeline versions before 1.4.0 (vectors with nullable values) still check."""
    if pa.types.is_fixed_size_list(t):
        return pa.list_(loose_type(t.value_type), t.list_size)
    if pa.types.is_list(t):
        return pa.list_(loose_type(t.value_type))
    if pa.types.is_large_list(t):
        return pa.large_list(loose_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, loose_type(f.type)) for f in t])
    return t


def shard_schema(dim: int) -> pa.Schema:
    """Arrow schema of a shard whose embeddings have dimension ``dim``."""
    return pa.schema([
        pa.field(TITLE_ID, pa.string(), nullable=False),
        pa.field(TRACK_ID, pa.int64(), nullable=False),
        pa.field(SHOT_ID, pa.int32(), nullable=False),
        pa.field(N_FACES, pa.int32(), nullable=False),
        pa.field(FRAME_IDX, pa.list_(pa.int32()), nullable=False),
        pa.field(TIMESTAMPS, pa.list_(pa.float64()), nullable=False),
        pa.field(BOXES, pa.list_(vector_type(4)), nullable=False),
        pa.field(INTERP_FRAME_IDX, pa.list_(pa.int32()), nullable=False),
        pa.field(INTERP_BOXES, pa.list_(vector_type(4)), nullable=False),
        pa.field(LANDMARKS, pa.list_(vector_type(10)), nullable=False),
        pa.field(DET_SCORE, pa.list_(pa.float32()), nullable=False),
        pa.field(FACE_SIZE, pa.list_(pa.float32()), nullable=False),
        pa.field(BLUR, pa.list_(pa.float32()), nullable=False),
        pa.field(EMBEDDINGS, pa.list_(vector_type(dim)), nullable=False),
        pa.field(MEAN_EMBEDDING, vector_type(dim), nullable=False),
        pa.field(TRACKLETS, pa.list_(vector_type(dim), N_TRACKLETS), nullable=True),
        pa.field(TRACKLET_MEMBERS, pa.list_(pa.list_(pa.int32())), nullable=False),
        pa.field(CROPS, pa.list_(pa.binary()), nullable=False),
        pa.field(CROP_POSITIONS, pa.list_(pa.int32()), nullable=False),
        pa.field(CANNOT_LINK, pa.list_(pa.int64()), nullable=False),
        pa.field(HARD_NEGATIVE, pa.int64(), nullable=True),
        pa.field(TRACK_QUALITY, pa.float32(), nullable=False),
        pa.field(IS_VALID, pa.bool_(), nullable=False),
        pa.field(INVALID_REASON, pa.string(), nullable=True),
    ])


def _leaves(prefix: str, t: pa.DataType):
    """(Parquet column path, Arrow leaf type) of each leaf under a field of type ``t``."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        yield from _leaves(prefix + ".list.element", t.value_type)
    elif pa.types.is_struct(t):
        for f in t:
            yield from _leaves(f"{prefix}.{f.name}", f.type)
    else:
        yield prefix, t


def parquet_options(schema: pa.Schema) -> dict:
    """How every shard writer encodes a shard (``pq.ParquetWriter`` / ``pq.write_table``
    keyword arguments): zstd; float columns (embeddings, tracklets, boxes...) in
    BYTE_STREAM_SPLIT encoding and no dictionary (unique floats overflow a dictionary page
    and fall back anyway); JPEG crops plain; the other columns (ids, lists of ids, flags,
    strings) dictionary-encoded. With :func:`vector_type`'s non-null values, against the
    encoding before pipeline 1.4.0 (zstd, dictionaries everywhere): 19-22 % smaller, written
    2.5-3x faster, float columns read 1.6-2.0x faster (``bench/shard_encoding.py``)."""
    floats, dictionary = {}, []
    for f in schema:
        leaves = list(_leaves(f.name, f.type))
        if all(pa.types.is_floating(t) for _, t in leaves):
            floats.update({path: "BYTE_STREAM_SPLIT" for path, _ in leaves})
        elif not any(pa.types.is_binary(t) for _, t in leaves):
            dictionary.append(f.name)
    return dict(compression="zstd", use_dictionary=dictionary, column_encoding=floats)


# One line per column for dataset cards (``harvest card``); the same names as ``shard_schema``.
COLUMN_DESCRIPTIONS = {
    "title_id": "title: readable file stem + 12 hex digits of sha256(canonical URI | size)",
    "track_id": "track number, unique in the title (0..T-1 in order of first face; gaps after a takedown)",
    "shot_id": "shot that holds every face of the track",
    "n_faces": "N, the number of faces (detections) in the track",
    "frame_idx": "frame number of each face, strictly increasing, in [0, frames decoded)",
    "timestamps": "presentation time of each face's frame, seconds",
    "boxes": "x1, y1, x2, y2 of each face in display pixels",
    "interp_frame_idx": "frames inside the track's span where no face was detected (detection "
                        "stride or a miss): frame_idx + interp_frame_idx = every frame of the span",
    "interp_boxes": "box on each interp_frame_idx frame, interpolated linearly (not detected)",
    "landmarks": "5 points per face (eyes, nose, mouth corners), x/y interleaved",
    "det_score": "detector score of each face, in [0, 1]",
    "face_size": "sqrt(box area) of each face, pixels",
    "blur": "variance of the Laplacian of each aligned face crop (higher = sharper)",
    "embeddings": "unit-norm face embedding of each face (D from the backend)",
    "mean_embedding": "unit-norm mean of the track's embeddings",
    "tracklets": "anchor, p1, p2 hard-positive tracklet means (unit norm); null when N < 3",
    "tracklet_members": "positions (into the track's faces) of the faces of each tracklet",
    "crops": "aligned S x S RGB face crops as JPEG bytes (S = crop_size in metadata, 112 for "
             "ArcFace); which faces: the crops mode in metadata",
    "crop_positions": "position (into the track's faces) of each crop, ascending",
    "cannot_link": "track_ids of valid tracks of the title that share a frame with this one",
    "hard_negative": "the cannot-linked track whose mean is nearest the anchor tracklet",
    "track_quality": "median over faces of score x size factor x sharpness factor",
    "is_valid": "false for short or low-quality tracks (kept, never mined)",
    "invalid_reason": "short or low_quality when is_valid is false, else null",
}

# Columns that depend on the whole title (validity, constraints between tracks): a track's row
# without them can be written as soon as the track closes; they are filled in at the end.
TITLE_COLUMNS = (TITLE_ID, CANNOT_LINK, HARD_NEGATIVE, IS_VALID, INVALID_REASON)


def embedding_dim(schema: pa.Schema) -> int:
    """D of a shard schema (read from ``mean_embedding``)."""
    return schema.field(MEAN_EMBEDDING).type.list_size


def with_metadata(schema: pa.Schema, meta: dict[str, Any]) -> pa.Schema:
    missing = [k for k in METADATA_FIELDS if k not in meta]
    if missing:
        raise ValueError(f"shard metadata lacks {missing}")
    return schema.with_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})


def read_metadata(schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError("not a harvest shard: no 'harvest' file metadata")
    return json.loads(raw)


# Manifest: one record per title, stored as one JSON object per title.
MANIFEST_FIELDS = (
    "title_id", "source", "status", "error", "shard_path", "shard_sha256",
    "frames", "faces", "tracks", "valid_tracks", "cannot_link_pairs", "seconds",
    "config_hash", "backend", "pipeline_version", "finished_at",
)
# Also written (records and shard metadata) but optional, absent from older runs:
# "requested_config_hash", the hash of the config as given (``auto`` unresolved) that resume
# compares; "config_hash"/"backend" say what actually ran.
STATUS_DONE = "done"
STATUS_FAILED = "failed"
COUNT_FIELDS = ("frames", "faces", "tracks", "valid_tracks", "cannot_link_pairs")
