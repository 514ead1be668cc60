"""A shard as the validation rules see it (:mod:`harvest.dataset.shard_rules`): its columns
decoded once, on first use, and shared by every rule; the helpers the rules phrase their
violations with.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from harvest.dataset import schema as S
from harvest.vectors import l2_normalize

UNIT_TOL = 1e-3
PER_FACE = (S.FRAME_IDX, S.TIMESTAMPS, S.BOXES, S.LANDMARKS, S.DET_SCORE, S.FACE_SIZE, S.BLUR,
            S.EMBEDDINGS)
SHOWN = 5  # track ids listed per violation


def ids(track_ids: np.ndarray, mask: np.ndarray | None = None) -> str:
    """"k track(s): a, b, c (+n more)" for the (masked) track ids."""
    u = np.unique(track_ids if mask is None else track_ids[mask])
    more = f" (+{len(u) - SHOWN} more)" if len(u) > SHOWN else ""
    return f"{len(u)} track(s): {', '.join(map(str, u[:SHOWN].tolist()))}{more}"


def flatten_lists(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Values and owning row of a list array, one level down (null rows contribute nothing)."""
    return (pc.list_flatten(arr).to_numpy(zero_copy_only=False),
            pc.list_parent_indices(arr).to_numpy(zero_copy_only=False))


def fixed_vectors(arr: pa.Array, dim: int) -> np.ndarray:
    """(M, dim) float array of a fixed_size_list<float, dim> array without null slots."""
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def list_lengths(arr: pa.Array) -> np.ndarray:
    return pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)


def is_unit(vectors: np.ndarray) -> np.ndarray:
    return np.abs(np.linalg.norm(vectors, axis=-1) - 1.0) <= UNIT_TOL


def same_direction(sums: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    return (l2_normalize(sums, dtype=None) * vectors).sum(-1) >= 1.0 - UNIT_TOL


@dataclass
class ShardView:
    """One shard's columns as the rules need them, each decoded once on first use.

    Per track (T rows): ``tid``, ``n_faces``, ``shot_id``, ``valid``, ``mean_emb``, ``has_tl``
    (tracklets set), ``starts`` (offset of each track's first face), ``first``/``last`` frame.
    Per face (F): ``frames``, ``row`` (its track's row), ``emb``. Tracklet members:
    :attr:`members`.
    """
    table: pa.Table
    meta: dict
    dim: int
    min_track_frames: int | None = None

    def col(self, name: str) -> pa.Array:
        return self.table.column(name).combine_chunks()

    @cached_property
    def tid(self) -> np.ndarray:
        return self.col(S.TRACK_ID).to_numpy()

    @cached_property
    def n_faces(self) -> np.ndarray:
        return self.col(S.N_FACES).to_numpy().astype(np.int64)

    @cached_property
    def shot_id(self) -> np.ndarray:
        return self.col(S.SHOT_ID).to_numpy().astype(np.int64)

    @cached_property
    def valid(self) -> np.ndarray:
        return self.col(S.IS_VALID).to_numpy(zero_copy_only=False)

    @cached_property
    def _frames_rows(self) -> tuple[np.ndarray, np.ndarray]:
        frames, row = flatten_lists(self.col(S.FRAME_IDX))
        return frames.astype(np.int64), row

    @property
    def frames(self) -> np.ndarray:
        return self._frames_rows[0]

    @property
    def row(self) -> np.ndarray:
        return self._frames_rows[1]

    @cached_property
    def starts(self) -> np.ndarray:
        return np.r_[0, np.cumsum(self.n_faces)]

    @cached_property
    def _span(self) -> tuple[np.ndarray, np.ndarray]:
        has = self.n_faces > 0
        first, last = np.zeros(len(self.tid), np.int64), np.full(len(self.tid), -1, np.int64)
        first[has] = self.frames[self.starts[:-1][has]]
        last[has] = self.frames[self.starts[1:][has] - 1]
        return first, last

    @property
    def first(self) -> np.ndarray:
        return self._span[0]

    @property
    def last(self) -> np.ndarray:
        return self._span[1]

    @cached_property
    def emb(self) -> np.ndarray:
        return fixed_vectors(pc.list_flatten(self.col(S.EMBEDDINGS)), self.dim)

    @cached_property
    def mean_emb(self) -> np.ndarray:
        return fixed_vectors(self.col(S.MEAN_EMBEDDING), self.dim)

    @cached_property
    def has_tl(self) -> np.ndarray:
        return self.col(S.TRACKLETS).is_valid().to_numpy(zero_copy_only=False)

    @cached_property
    def tracklets(self) -> np.ndarray:
        """(T', N_TRACKLETS, D) of the tracks whose tracklets are set."""
        if not self.has_tl.any():
            return np.zeros((0, S.N_TRACKLETS, self.dim), np.float32)
        tl = self.col(S.TRACKLETS).filter(pa.array(self.has_tl)).flatten()
        return fixed_vectors(tl, self.dim).reshape(-1, S.N_TRACKLETS, self.dim)

    @cached_property
    def members(self) -> "Members":
        return Members.of(self)


@dataclass
class Members:
    """``tracklet_members`` decoded: per list its track row (``inner_row``) and length; per
    position its value, list and track row; and whether the lists are well formed (``ok``:
    :data:`N_TRACKLETS` non-empty lists where tracklets are set, positions inside the track,
    disjoint), which the tracklet-mean and crop rules need."""
    n_lists: np.ndarray
    inner_row: np.ndarray
    inner_len: np.ndarray
    pos: np.ndarray
    pos_inner: np.ndarray
    pos_row: np.ndarray
    bad_lists: np.ndarray     # (T,) bool
    out_of_range: np.ndarray  # (P,) bool
    overlapping: np.ndarray   # rows whose lists share a position

    @classmethod
    def of(cls, v: ShardView) -> "Members":
        members = v.col(S.TRACKLET_MEMBERS)
        n_lists = list_lengths(members)
        inner = pc.list_flatten(members)
        inner_row = pc.list_parent_indices(members).to_numpy(zero_copy_only=False)
        inner_len = list_lengths(inner)
        bad = (v.has_tl & (n_lists != S.N_TRACKLETS)) | (
            ~v.has_tl & ~np.isin(n_lists, (0, S.N_TRACKLETS)))
        bad |= v.has_tl & np.isin(np.arange(len(v.tid)), inner_row[inner_len == 0])
        pos, pos_inner = flatten_lists(inner)
        pos_row = inner_row[pos_inner].astype(np.int64)
        pos = pos.astype(np.int64)
        width = int(v.n_faces.max()) + 1
        codes, counts = np.unique(pos_row * width + pos, return_counts=True)
        return cls(n_lists, inner_row, inner_len, pos, pos_inner, pos_row, bad,
                   (pos < 0) | (pos >= v.n_faces[pos_row]), codes[counts > 1] // width)

    @property
    def ok(self) -> bool:
        return not self.out_of_range.any() and not self.bad_lists.any()
