"""Arrow columns of a shard to numpy, with no per-track Python: fixed-size lists as zero-copy
views, list columns by their offsets, (title, track_id) keys matched by sorting.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from training.columns import EMBEDDINGS, MEAN_EMBEDDING


def float_vectors(arr, dim: int) -> np.ndarray:
    """Fixed-size-list (of fixed-size lists) float column -> float32 array (n, ..., dim), a
    zero-copy view of the Arrow buffer where the values are float32 already. Null slots come
    back as whatever their child slots hold (a fixed-size list keeps them): select rows first."""
    if isinstance(arr, pa.ChunkedArray):        # combine_chunks copies even a single chunk
        arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    n, flat, start, width = len(arr), arr, 0, 1     # start: logical index into ``flat``
    while pa.types.is_fixed_size_list(flat.type):
        size = flat.type.list_size
        start, width = (start + flat.offset) * size, width * size   # ``.values`` ignores offset
        flat = flat.values
    values = flat.to_numpy(zero_copy_only=False)[start:start + n * width]
    return values.astype(np.float32, copy=False).reshape(n, -1, dim)


def title_codes(col) -> np.ndarray:
    """String column -> (n,) int64 rank of each value among the sorted distinct values
    (``np.unique``'s inverse), without building Python strings per row."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    enc = col.dictionary_encode() if not pa.types.is_dictionary(col.type) else col
    names = enc.dictionary.to_numpy(zero_copy_only=False)
    rank = np.empty(len(names), np.int64)
    rank[np.argsort(names, kind="stable")] = np.arange(len(names))
    return rank[enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)]


def locate(key_title: np.ndarray, key_id: np.ndarray, title: np.ndarray,
            ids: np.ndarray) -> np.ndarray:
    """Position in the (unique) keys (``key_title``, ``key_id``) of each query (``title``,
    ``ids``), -1 where absent. O((n + q) log(n + q)), no Python loop."""
    if not len(ids):
        return np.zeros(0, np.int64)
    if not len(key_id):
        return np.full(len(ids), -1, np.int64)
    uniq, inv = np.unique(np.concatenate([key_id, ids]), return_inverse=True)
    span = len(uniq)
    keys = key_title.astype(np.int64) * span + inv[:len(key_id)]
    query = title.astype(np.int64) * span + inv[len(key_id):]
    order = np.argsort(keys, kind="stable")
    pos = np.minimum(np.searchsorted(keys[order], query), len(keys) - 1)
    return np.where(keys[order][pos] == query, order[pos], -1).astype(np.int64)


def list_values(col, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """List column at ``rows`` -> (row number in ``rows`` of each value, the values), in list
    order (nulls are empty)."""
    taken = col.take(pa.array(rows))
    taken = taken.combine_chunks() if isinstance(taken, pa.ChunkedArray) else taken
    counts = pc.list_value_length(taken).fill_null(0).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(taken).to_numpy(zero_copy_only=False)
    return np.repeat(np.arange(len(rows), dtype=np.int64), counts.astype(np.int64)), values


def faces_of(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per-face ``embeddings`` of the tracks of ``table`` -> (faces (F, D) float32, track row
    (F,) int64), faces of a track consecutive and in time order. O(F D)."""
    dim = table.schema.field(MEAN_EMBEDDING).type.list_size
    col = table[EMBEDDINGS].combine_chunks()
    counts = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    faces = float_vectors(pc.list_flatten(col), dim)[:, 0]
    return faces, np.repeat(np.arange(len(counts), dtype=np.int64), counts)
