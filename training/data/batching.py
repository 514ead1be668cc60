"""Samples to batches: pools of title groups cut into batches (:func:`pooled_batches`, by
index, no copy), the collate that copies a batch's rows once, and the prefetch thread that
makes batches ahead of the training step (:func:`prefetched`).
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import torch

from training.data.samples import Rows, SampleKind, Samples, build_samples, sample_kind

SHUFFLE_BATCHES = 4      # views/triplets: samples are shuffled in a pool of this many batches


class Collated(NamedTuple):
    """One batch already collated: ``tensors`` for the head's batch_loss, ``n`` samples."""
    tensors: dict
    n: int


def collated(batches: Iterable[tuple["Samples", np.ndarray]]) -> Iterator[Collated]:
    """(samples, indices) pairs -> :class:`Collated` batches."""
    for samples, idx in batches:
        yield Collated(collate(samples, idx), len(idx))


_DONE = object()


def prefetched(items: Iterable, depth: int = 2) -> Iterator:
    """``items`` produced by a background thread, up to ``depth`` ahead of the consumer.

    Reading (Arrow), building samples and collating (numpy) release the GIL for their bulk work,
    as the model's forward and backward do, so the next batches are made while a step runs.
    An exception in the producer is raised in the consumer; closing the generator (or leaving
    it unfinished) stops the producer after its current item."""
    q: queue.Queue = queue.Queue(maxsize=max(int(depth), 1))
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for x in items:
                if not put(x):
                    return
            put(_DONE)
        except BaseException as e:      # noqa: BLE001 - handed to the consumer
            put(e)
        finally:
            close = getattr(items, "close", None)
            if close is not None:       # a generator: end its readers now, not at collection
                close()

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            x = q.get()
            if x is _DONE:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()
        while thread.is_alive():        # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass


_ROW_ARRAYS = ("views", "negative")       # per-sample float arrays pools address as Rows


def concat_samples(parts: list[Samples]) -> Samples:
    """Samples of several title groups as one (cannot-link indices shifted); the big per-sample
    arrays are merged as :class:`Rows` (no copy)."""
    if len(parts) == 1:
        return parts[0]
    kind, arrays = parts[0].kind, {}
    for k in parts[0].arrays:
        if k == "cl_idx":
            offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
            arrays[k] = np.concatenate([p.arrays[k] + o for p, o in zip(parts, offsets)])
        elif k == "cl_ptr":
            ends = np.cumsum([0] + [p.arrays[k][-1] for p in parts[:-1]])
            arrays[k] = np.concatenate([parts[0].arrays[k][:1]]
                                       + [p.arrays[k][1:] + e for p, e in zip(parts, ends)])
        elif k in _ROW_ARRAYS:
            arrays[k] = Rows.concat([p.arrays[k] for p in parts])
        else:
            arrays[k] = np.concatenate([p.arrays[k] for p in parts])
    return Samples(kind, arrays)


def stream_batches(tables: Iterable[pa.Table], kind, batch_size: int,
                   rng: np.random.Generator, identities: dict | None = None, hp: dict | None = None
                   ) -> Iterator[tuple[Samples, np.ndarray]]:
    """Title groups -> (samples, batch indices) by ``kind``'s batcher (a :class:`SampleKind`
    or its name; :func:`pooled_batches` unless the kind has its own)."""
    kind = sample_kind(kind)
    return (kind.batches or pooled_batches)(kind, tables, batch_size, rng, identities, hp or {})


def pooled_batches(kind: SampleKind, tables: Iterable[pa.Table], batch_size: int,
                   rng: np.random.Generator, identities: dict | None = None, hp=None
                   ) -> Iterator[tuple[Samples, np.ndarray]]:
    """Batches of ``batch_size`` (the last few batches of an epoch share the rest evenly: each
    at least half a batch unless there is less in all).

    Weak-label samples (cannot-link CSR) keep their title's first-frame order and are cut into
    contiguous batches, so co-occurring (cannot-link) tracks share a batch; others are
    shuffled in a pool of ``SHUFFLE_BATCHES`` batches. Memory: one title plus the pool.
    """
    pool_size, parts, orders, n, weak = SHUFFLE_BATCHES * batch_size, [], [], 0, False
    for table in tables:
        s = build_samples(table, kind, identities, required=False)
        if s is None:
            continue
        if s.weak:       # co-occurring tracks next to each other, contiguous batches
            orders.append(np.lexsort((s.arrays["first_frame"], s.arrays["title"])))
            weak, pool_size = True, batch_size
        parts.append(s)
        n += len(s)
        if n >= pool_size + batch_size:        # keep >= batch_size back for the merged tail
            pool, order = concat_samples(parts), _pool_order(parts, orders, weak, rng)
            k = (n - batch_size) // batch_size
            for b in range(k):
                yield pool, order[b * batch_size:(b + 1) * batch_size]
            rest = order[k * batch_size:]
            parts, n = [take(pool, rest)], len(rest)
            orders = [np.arange(n)] if weak else []
    if n:              # the rest in the fewest batches of at most batch_size
        pool, order = concat_samples(parts), _pool_order(parts, orders, weak, rng)
        for idx in np.array_split(order, -(-n // batch_size)):
            yield pool, idx


def _pool_order(parts: list, orders: list, weak: bool, rng: np.random.Generator) -> np.ndarray:
    """Batch order over the concatenated ``parts``: weak labels each part in its own order (an
    index, not a copy of the samples), else a random permutation."""
    n = sum(len(p) for p in parts)
    if not weak:
        return rng.permutation(n)
    offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
    return np.concatenate([o + off for o, off in zip(orders, offsets)]).astype(np.int64)


def take(samples: Samples, idx: np.ndarray) -> Samples:
    """The samples at ``idx`` (cannot-link partners outside ``idx`` dropped)."""
    a = samples.arrays
    out = {k: v.subset(idx) if isinstance(v, Rows) else v[idx]
           for k, v in a.items() if k not in ("cl_ptr", "cl_idx")}
    if samples.weak:
        pos = np.full(len(samples), -1, np.int64)
        pos[idx] = np.arange(len(idx))
        rows, partner = partners(a, idx, pos)
        keep = partner >= 0
        counts = np.bincount(rows[keep], minlength=len(idx))
        out["cl_ptr"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        out["cl_idx"] = partner[keep]
        out["labels"] = np.arange(len(idx), dtype=np.int64)
    return Samples(samples.kind, out, samples.meta)


def partners(a: dict, idx: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in ``idx``, ``pos`` of the partner) for every cannot-link partner of ``idx``."""
    starts, counts = a["cl_ptr"][idx], a["cl_ptr"][idx + 1] - a["cl_ptr"][idx]
    rows = np.repeat(np.arange(len(idx)), counts)
    flat = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    return rows, pos[a["cl_idx"][flat]]


def collate(samples: Samples, idx: np.ndarray, device=None) -> dict[str, torch.Tensor]:
    """Tensors of one batch for the head's batch_loss, by the samples' kind."""
    out = samples.kind.collate(samples, idx)
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out
