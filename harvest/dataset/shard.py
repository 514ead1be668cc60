"""Write a title's shard (schema in harvest.dataset.schema) in bounded memory, in two passes.

1. While the title is decoded, each track's row, minus the columns that need the whole title
   (``schema.TITLE_COLUMNS``), is appended to a local *spill* Parquet file as soon as the track
   closes (``SpillWriter``; a row group every ``FLUSH_BYTES``). Tracks close in a different order
   than they open, so the writer remembers where each track_id landed.
2. At the end of the title, ``write_shard_file`` reads the spill back a few row groups at a time,
   in track_id order, adds the title columns, and writes the final shard to a local file (row
   groups of about ``FLUSH_BYTES``), which ``harvest.dataset.storage.put_shard_file`` uploads.

Memory: one spill batch plus two spill row groups and one output batch (one copy: the groups are
chained, then one take orders the rows), whatever the title's length.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harvest.config import PIPELINE_VERSION
from harvest.dataset import schema as S
from harvest.dataset.schema import (JPEG_QUALITY, N_TRACKLETS, TITLE_COLUMNS, parquet_options,
                                    shard_schema, with_metadata)
from harvest.miners import Tracklets

FLUSH_BYTES = 8 << 20   # uncompressed bytes per row group (spill and final shard); a writer
                        # keeps ~27 KB of metadata per row group until it closes: 7 MB for
                        # a 500,000-face title at D=512 (spill and shard, 130 groups each)
_CACHED_GROUPS = 2      # spill row groups kept while reordering to track_id order (4 cost
                        # ~50 MB more RSS in the final write of a long title, and no speed)


@dataclass(frozen=True)
class TrackRow:
    """The per-track columns of one closed track (N faces, D dims)."""
    track_id: int
    shot_id: int
    frame_idx: np.ndarray      # (N,) int
    timestamps: np.ndarray     # (N,) float64 seconds
    boxes: np.ndarray          # (N, 4)
    landmarks: np.ndarray      # (N, 10)
    det_score: np.ndarray      # (N,)
    face_size: np.ndarray      # (N,)
    blur: np.ndarray           # (N,)
    embeddings: np.ndarray     # (N, D)
    mean_embedding: np.ndarray  # (D,)
    tracklets: Tracklets
    track_quality: float
    crops: list = dataclasses.field(default_factory=list)   # C JPEG byte strings
    crop_positions: np.ndarray = dataclasses.field(         # (C,) ascending face positions
        default_factory=lambda: np.zeros(0, np.int32))
    interp_frame_idx: np.ndarray = dataclasses.field(       # (M,) undetected frames of the span
        default_factory=lambda: np.zeros(0, np.int64))
    interp_boxes: np.ndarray = dataclasses.field(           # (M, 4) their interpolated boxes
        default_factory=lambda: np.zeros((0, 4), np.float32))

    @property
    def nbytes(self) -> int:
        return (int(sum(getattr(self, f).nbytes for f in _PER_FACE + _INTERP))
                + self.mean_embedding.nbytes * 4 + self.crop_bytes)

    @property
    def crop_bytes(self) -> int:
        return sum(map(len, self.crops))


def encode_crops(crops: np.ndarray) -> list[bytes]:
    """(n, S, S, 3) uint8 RGB aligned faces -> n JPEG byte strings (quality JPEG_QUALITY)."""
    import cv2
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    out = []
    for crop in crops:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(crop[..., ::-1]), params)
        if not ok:
            raise ValueError("JPEG encoding of a face crop failed")
        out.append(buf.tobytes())
    return out


def decode_crop(data: bytes) -> np.ndarray | None:
    """JPEG bytes of a stored crop -> (S, S, 3) uint8 RGB, or None when undecodable."""
    import cv2
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None or img.ndim != 3 or img.shape[2] != 3:
        return None
    return img[..., ::-1]


_PER_FACE = (S.FRAME_IDX, S.TIMESTAMPS, S.BOXES, S.LANDMARKS, S.DET_SCORE, S.FACE_SIZE, S.BLUR,
             S.EMBEDDINGS)
_INTERP = (S.INTERP_FRAME_IDX, S.INTERP_BOXES)
_TYPES = {S.FRAME_IDX: np.int32, S.TIMESTAMPS: np.float64}


def spill_schema(dim: int) -> pa.Schema:
    return pa.schema([f for f in shard_schema(dim) if f.name not in TITLE_COLUMNS])


def _fixed(values: np.ndarray, width: int) -> pa.Array:
    """(n, width) float -> a vector column (``vector_type(width)``)."""
    flat = pa.array(np.ascontiguousarray(values, np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, type=S.vector_type(width))


def _ragged(parts: list, field: pa.Field) -> pa.Array:
    """Per-track arrays of per-face values -> list array of ``field``'s type."""
    offsets = pa.array(np.r_[0, np.cumsum([len(p) for p in parts])].astype(np.int32))
    value_type = field.type.value_type
    flat = np.concatenate(parts)
    if pa.types.is_fixed_size_list(value_type):
        inner = _fixed(flat.reshape(len(flat), value_type.list_size), value_type.list_size)
    else:
        inner = pa.array(flat.astype(value_type.to_pandas_dtype()), value_type)
    return pa.ListArray.from_arrays(offsets, inner)


def track_table(rows: list[TrackRow], dim: int) -> pa.Table:
    """Closed tracks -> a table with ``spill_schema(dim)``."""
    schema = spill_schema(dim)
    nulls = [r.tracklets.vectors is None for r in rows]
    vectors = np.stack([np.zeros((N_TRACKLETS, dim), np.float32) if r.tracklets.vectors is None
                        else r.tracklets.vectors for r in rows])
    columns = {
        S.TRACK_ID: pa.array([r.track_id for r in rows], pa.int64()),
        S.SHOT_ID: pa.array([r.shot_id for r in rows], pa.int32()),
        S.N_FACES: pa.array([len(r.frame_idx) for r in rows], pa.int32()),
        **{name: _ragged([getattr(r, name) for r in rows], schema.field(name))
           for name in _PER_FACE + _INTERP},
        S.MEAN_EMBEDDING: _fixed(np.stack([r.mean_embedding for r in rows]), dim),
        S.TRACKLETS: pa.FixedSizeListArray.from_arrays(
            _fixed(vectors.reshape(-1, dim), dim), N_TRACKLETS, mask=pa.array(nulls, pa.bool_())),
        S.TRACKLET_MEMBERS: pa.array([r.tracklets.members for r in rows],
                                     pa.list_(pa.list_(pa.int32()))),
        S.CROPS: pa.array([r.crops for r in rows], pa.list_(pa.binary())),
        S.CROP_POSITIONS: pa.array([np.asarray(r.crop_positions, np.int32) for r in rows],
                                   pa.list_(pa.int32())),
        S.TRACK_QUALITY: pa.array([r.track_quality for r in rows], pa.float32()),
    }
    return pa.table([columns[f.name] for f in schema], schema=schema)


def warm_up(dim: int = 128) -> None:
    """Build and write one spill flush's worth of rows (``FLUSH_BYTES``) in memory once, so that
    what the first flush loads for good (pyarrow's pandas shim imports pandas, ~50 MB; the
    Parquet writer; Arrow's memory pool growing to a flush's size, ~70 MB) is in place when a
    worker starts, not part-way through its first long title: measured on a 15-minute title,
    the worker's RSS otherwise steps up twice in its first minutes, then stays flat."""
    n = max(1, FLUSH_BYTES // (4 * (dim + 20)))
    z = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    row = TrackRow(0, 0, np.arange(n), np.arange(n) / 25.0, np.tile([0, 0, 1, 1], (n, 1)),
                   z(n, 10), z(n), z(n), z(n), np.ones((n, dim), np.float32),
                   np.ones(dim, np.float32), Tracklets(None, []), 1.0)
    with pq.ParquetWriter(pa.BufferOutputStream(), spill_schema(dim), compression="none") as w:
        w.write_table(track_table([row], dim))


class SpillWriter:
    """Append closed tracks to a local Parquet file; ``location[track_id]`` = (row group, row)."""

    def __init__(self, path: str, dim: int, flush_bytes: int | None = None):
        self.path, self.dim = path, dim
        self.flush_bytes = FLUSH_BYTES if flush_bytes is None else flush_bytes
        self.location: dict[int, tuple[int, int]] = {}
        self._rows: list[TrackRow] = []
        self._bytes = 0
        self._groups = 0
        self._writer = pq.ParquetWriter(path, spill_schema(dim), compression="none")

    def add(self, row: TrackRow) -> None:
        self.location[row.track_id] = (self._groups, len(self._rows))
        self._rows.append(row)
        self._bytes += row.nbytes
        if self._bytes >= self.flush_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            table = track_table(self._rows, self.dim)
            self._writer.write_table(table, row_group_size=table.num_rows)
            self._groups += 1
            self._rows, self._bytes = [], 0

    def close(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None


@dataclass(frozen=True)
class TitleColumns:
    """The columns that need the whole title, indexed by track_id (T tracks)."""
    is_valid: np.ndarray        # (T,) bool
    invalid_reason: list        # T entries, None when valid
    cannot_link: list           # T sorted lists of track ids
    hard_negative: np.ndarray   # (T,) track id or -1


def write_shard_file(spill: SpillWriter, title: TitleColumns, title_id: str, meta: dict,
                     out_path: str, n_faces: np.ndarray, flush_bytes: int | None = None,
                     crop_bytes: np.ndarray | None = None) -> None:
    """Second pass: the spill (closed) plus the title columns -> the final shard at the local
    ``out_path``, rows in track_id order. ``n_faces`` (T,) and ``crop_bytes`` (T,) (JPEG bytes
    of each track) size the output row groups."""
    dim = spill.dim
    flush_bytes = FLUSH_BYTES if flush_bytes is None else flush_bytes
    schema = with_metadata(shard_schema(dim), {**meta, "title_id": title_id,
                                               "pipeline_version": PIPELINE_VERSION,
                                               "embedding_dim": dim})
    T = len(title.is_valid)
    face_bytes = 4 * (dim + 4 + 10 + 3) + 4 + 8
    source = pq.ParquetFile(spill.path) if T else None
    cache: OrderedDict[int, pa.Table] = OrderedDict()

    def group(g: int) -> pa.Table:
        if g not in cache:
            cache[g] = source.read_row_group(g)
            if len(cache) > _CACHED_GROUPS:
                cache.popitem(last=False)
        cache.move_to_end(g)
        return cache[g]

    with pq.ParquetWriter(out_path, schema, **parquet_options(schema)) as writer:
        start = 0
        while start < T:
            stop, size = start, 0
            while stop < T and (stop == start or size < flush_bytes):
                size += int(n_faces[stop]) * face_bytes
                size += 0 if crop_bytes is None else int(crop_bytes[stop])
                stop += 1
            ids = np.arange(start, stop)
            loc = np.array([spill.location[int(t)] for t in ids], np.int64).reshape(-1, 2)
            # the spill groups these rows sit in, chained without a copy; then one take puts
            # the rows in track_id order (one copy of the batch, not three)
            used = list(dict.fromkeys(loc[:, 0].tolist()))
            tables = [group(g) for g in used]
            first = dict(zip(used, np.cumsum([0] + [t.num_rows for t in tables[:-1]])))
            index = np.array([first[g] for g in loc[:, 0].tolist()], np.int64) + loc[:, 1]
            rows = pa.concat_tables(tables).take(pa.array(index))
            hn = title.hard_negative[start:stop]
            extra = {
                S.TITLE_ID: pa.array([title_id] * len(ids), pa.string()),
                S.CANNOT_LINK: pa.array(title.cannot_link[start:stop], pa.list_(pa.int64())),
                S.HARD_NEGATIVE: pa.array(hn, pa.int64(), mask=hn < 0),
                S.IS_VALID: pa.array(title.is_valid[start:stop], pa.bool_()),
                S.INVALID_REASON: pa.array(title.invalid_reason[start:stop], pa.string()),
            }
            cols = [extra[f.name] if f.name in extra else rows.column(f.name) for f in schema]
            table = pa.Table.from_arrays(cols, schema=schema)
            writer.write_table(table, row_group_size=max(1, table.num_rows))
            start = stop
