"""Samples and their kinds: :class:`Samples` (the arrays of one or more title groups),
:class:`SampleKind` (what a head trains on: builder, batcher, collate, columns) with its
registry, :func:`build_samples`, and :class:`Rows` (rows of several per-title arrays addressed
without copying them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from training.columns import TRAIN_COLUMNS


@dataclass
class Samples:
    """Training arrays of one or more title groups (see module docstring); ``meta`` holds
    per-pool objects that are not per-sample arrays (the TSiam negative relation)."""
    kind: "SampleKind"
    arrays: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.arrays[self.kind.count_key])

    @property
    def dim(self) -> int:
        return self.arrays[self.kind.count_key].shape[-1]

    @property
    def weak(self) -> bool:
        return "cl_ptr" in self.arrays


@dataclass(frozen=True)
class SampleKind:
    """What a head trains on: ``build(table, identities)`` -> arrays dict or None (one or more
    whole title groups), ``batches(kind, tables, batch_size, rng, identities, hp)`` -> iterator
    of (samples, indices) (None: ``batching.pooled_batches``), ``collate(samples, idx)`` -> tensors for the head's batch_loss, the
    shard ``columns`` it reads and the array whose length counts the samples."""
    name: str
    build: Callable
    collate: Callable
    batches: Callable = None
    columns: tuple = TRAIN_COLUMNS
    count_key: str = "views"


SAMPLE_KINDS: dict[str, SampleKind] = {}


def register_kind(kind: SampleKind) -> SampleKind:
    SAMPLE_KINDS[kind.name] = kind
    return kind


def sample_kind(kind) -> SampleKind:
    """A :class:`SampleKind` or the name of a registered one."""
    if isinstance(kind, SampleKind):
        return kind
    try:
        return SAMPLE_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown sample kind {kind!r}; choose from {sorted(SAMPLE_KINDS)}") from None


def build_samples(table: pa.Table, kind, identities: dict | None = None,
                  required: bool = True) -> Samples | None:
    """One or more whole title groups -> :class:`Samples` of ``kind`` (a :class:`SampleKind`
    or its name). ``identities`` ((title_id, track_id) -> int identity id, the same ids in
    every title) switches ``clusters`` to supervised mode. With no usable sample:
    ``ValueError`` when ``required``, else None."""
    kind = sample_kind(kind)
    arrays = kind.build(table, identities) if table.num_rows else None
    if arrays is None or not len(arrays[kind.count_key]):
        if not required:
            return None
        raise ValueError(f"no usable training samples of kind {kind.name!r}")
    meta = arrays.pop("meta", {})
    return Samples(kind, arrays, meta)


class Rows:
    """Rows of several per-title arrays addressed without copying them: row i is
    ``bases[part[i]][local[i]]``. Pools hold their (n, 3, D) views like this, so merging title
    groups into a pool and carrying a pool's rest over copy index arrays only; a batch's rows
    are gathered once, by its collate (``rows[idx]``)."""

    def __init__(self, bases: list, part: np.ndarray, local: np.ndarray):
        self.bases, self.part, self.local = bases, part, local
        self.shape = (len(part),) + bases[0].shape[1:]
        self.dtype, self.ndim = bases[0].dtype, bases[0].ndim

    @classmethod
    def concat(cls, arrays: list) -> "Rows":
        bases, parts, locals_ = [], [], []
        for a in arrays:
            r = a if isinstance(a, Rows) else cls([a], np.zeros(len(a), np.int32),
                                                   np.arange(len(a), dtype=np.int64))
            parts.append(r.part + len(bases))
            locals_.append(r.local)
            bases += r.bases
        return cls(bases, np.concatenate(parts), np.concatenate(locals_))

    def __len__(self) -> int:
        return len(self.part)

    def subset(self, idx: np.ndarray) -> "Rows":
        """The rows ``idx`` as a new :class:`Rows` (bases no row refers to are let go)."""
        part, local = self.part[idx], self.local[idx]
        used = np.unique(part)
        remap = np.zeros(len(self.bases), np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        return Rows([self.bases[b] for b in used], remap[part], local)

    def gather(self, idx: np.ndarray, rest: tuple = ()) -> np.ndarray:
        """``rows[idx][(slice(None),) + rest]``, copying only what is selected."""
        part, local = self.part[idx], self.local[idx]
        if len(self.bases) == 1:
            return self.bases[0][(local,) + rest]
        probe = self.bases[0][(local[:0],) + rest]
        out = np.empty((len(local),) + probe.shape[1:], self.dtype)
        for b in np.unique(part):
            m = part == b
            out[m] = self.bases[b][(local[m],) + rest]
        return out

    def __getitem__(self, key):
        if isinstance(key, tuple):
            if isinstance(key[0], (int, np.integer)):
                return self[key[0]][key[1:]]
            return self.gather(self._rows(key[0]), key[1:])
        if isinstance(key, (int, np.integer)):
            return self.bases[self.part[key]][self.local[key]]
        return self.gather(self._rows(key))

    def _rows(self, key) -> np.ndarray:
        return np.arange(len(self))[key] if isinstance(key, slice) else key

    def __array__(self, dtype=None, copy=None):
        out = self.gather(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype, copy=False)
