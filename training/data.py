"""Shards -> per-head training samples and batches, one title group at a time.

Nothing here reads a whole corpus. The driver lists shards and reads only their footers
(:func:`shard_info`: title, D, track count) to split titles (:func:`split_titles`) and deal
them to workers (:func:`deal_titles`, balanced by track count, reshuffled every epoch). A worker
streams its titles (:func:`read_title`: one shard, its kind's columns, read one ahead),
turns each title group into samples (:func:`build_samples`: the hard negative and cannot-link
partners are always in the same title) and cuts batches (:func:`stream_batches`), holding at
most one title plus a small pool of samples. A :class:`SampleKind` (named by the registry;
:data:`SAMPLE_KINDS` maps its name to it) carries what a head needs as callables: its per-title
sample builder, its batcher and its collate function. Arrays of the track kinds:

    views     (n, 3, D) float32  anchor, p1, p2 tracklets              (all kinds)
    negative  (n, D)    float32  hard negative's anchor tracklet       (triplets)
    labels    (n,)      int64    cluster id: own index or identity     (clusters)
    cl_ptr, cl_idx      CSR of cannot-link partners as sample indices  (clusters, weak mode)
    title     (n,)      int64    title index; ``track_id``, ``first_frame`` (n,) int64

The frame kinds (SSiam/TSiam, :func:`frames_kind`) read the per-face ``embeddings`` of one
title's valid tracks: ``x`` (F, D) faces, ``track`` (F,) track row of each face, ``means``
(T, D); each batch draws ``draw`` faces of the title and its collate mines the pairs (from the
title's :class:`~training.losses.siamese_miners.FaceDistances` and neighbour lists, made once
per title).

Speed (docs/benchmarks.md, "Training data path"): no per-track Python. Columns are decoded
from the Arrow buffers by numpy (fixed-size lists as zero-copy (n, 3, D) views, list columns by
their offsets), track keys are matched by sorting (:func:`_locate`), each kind reads only its
columns (ImpTriplet's ``mean_embedding`` only for titles whose hard negatives need it), a pool
merges title groups by index (:class:`_Rows`, no copy: ImpTriplet's negatives too) and a
batch's rows are copied once, by its collate. ``training.train.worker_batches`` runs all of it in a prefetch
thread (:func:`prefetched`) ahead of the training step.
"""
from __future__ import annotations

import hashlib
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from harvest.dataset.schema import embedding_dim, read_metadata
from harvest.dataset.storage import is_local
from training.columns import (CANNOT_LINK, EMBEDDINGS, FRAME_IDX, HARD_NEGATIVE, IS_VALID,
                              MEAN_EMBEDDING, TITLE_ID, TRACK_ID, TRACKLETS, TRAIN_COLUMNS)

SHUFFLE_BATCHES = 4      # views/triplets: samples are shuffled in a pool of this many batches


# ------------------------------------------------------------------------------- reading
def _fs(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def list_shards(url: str) -> list[str]:
    """Parquet files under ``url`` (a file or a directory, searched recursively), as URLs."""
    fs, path = _fs(url)
    if fs.isfile(path):
        files = [path]
    else:
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"no .parquet shards under {url}")
    return [p if is_local(fs) else fs.unstrip_protocol(p) for p in files]


def shard_info(url: str) -> list[dict]:
    """One dict per shard from its footer only: ``path``, ``title_id``, ``source_uri``, ``dim``,
    ``tracks`` (row count)."""
    out = []
    for path in list_shards(url):
        fs, p = _fs(path)
        with fs.open(p, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        schema = meta.schema.to_arrow_schema()
        harvest = read_metadata(schema)
        out.append(dict(path=path, title_id=harvest["title_id"], source_uri=harvest["source_uri"],
                        dim=embedding_dim(schema), tracks=meta.num_rows))
    return out


def read_title(path: str, columns=TRAIN_COLUMNS) -> pa.Table:
    """One shard (= one title group) with ``columns``, tracks in ``track_id`` order.

    ``ParquetFile.read`` on one thread (the dataset layer of ``pq.read_table`` costs about as
    much again on a 1,400-track shard, and a worker's cores belong to its model); a local path
    is memory-mapped. Shards the harvest wrote are already in track order: no sort then.
    ``columns`` may be :class:`Columns`: their lazy columns are read only where needed."""
    fs, p = _fs(path)
    if is_local(fs):
        table = _read_columns(pq.ParquetFile(p, memory_map=True), columns)
    else:
        with fs.open(p, "rb") as f:
            table = _read_columns(pq.ParquetFile(f), columns)
    if TRACK_ID in table.column_names:
        ids = table[TRACK_ID].to_numpy()
        if len(ids) > 1 and not (ids[1:] >= ids[:-1]).all():
            table = table.sort_by([(TRACK_ID, "ascending")])
    return table


class Columns(tuple):
    """The shard columns a kind reads, plus ``lazy``: (column, needed(table) -> bool) pairs;
    :func:`read_title` reads a lazy column (from the same open file, a second read) only when
    ``needed`` says the rows of the first read use it."""

    def __new__(cls, columns, lazy=()):
        self = super().__new__(cls, columns)
        self.lazy = tuple(lazy)
        return self


def _read_columns(pf: pq.ParquetFile, columns) -> pa.Table:
    """``columns`` of one Parquet file on one thread, then the lazy ones needed
    (:class:`Columns`)."""
    table = pf.read(columns=list(columns), use_threads=False)
    for name, needed in getattr(columns, "lazy", ()):
        if name not in table.column_names and needed(table):
            table = table.append_column(name, pf.read(columns=[name], use_threads=False)[name])
    return table


READ_AHEAD = 1           # shards read ahead of the one being consumed (2: no gain measured)


def iter_titles(paths: Iterable[str], columns=TRAIN_COLUMNS, ahead: int | None = None
                ) -> Iterator[pa.Table]:
    """:func:`read_title` of each path in order, the next ``ahead`` (default
    :data:`READ_AHEAD`) read meanwhile, each in its own thread (Parquet decoding releases the
    GIL)."""
    paths = list(paths)
    if not paths:
        return
    ahead = max(int(READ_AHEAD if ahead is None else ahead), 1)
    with ThreadPoolExecutor(ahead) as pool:
        pending = [pool.submit(read_title, p, columns) for p in paths[:ahead]]
        for k in range(len(paths)):
            table = pending.pop(0).result()
            if k + ahead < len(paths):
                pending.append(pool.submit(read_title, paths[k + ahead], columns))
            yield table


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


# ------------------------------------------------------------------------------- splitting
def title_hash(title_id: str) -> float:
    """Deterministic number in [0, 1) from the title id."""
    return int(hashlib.sha1(title_id.encode()).hexdigest()[:12], 16) / 16 ** 12


def split_titles(titles, val_titles=None, val_fraction: float = 0.2) -> tuple[list, list]:
    """-> (train titles, validation titles); a title is never in both.

    ``val_titles`` explicit (each must exist), else titles whose hash < ``val_fraction``; with
    two or more titles both sides are non-empty (the lowest / highest hash moves over).
    """
    titles = sorted(set(titles))
    if val_titles:
        missing = sorted(set(val_titles) - set(titles))
        if missing:
            raise ValueError(f"validation titles not in the shards: {missing}")
        val = sorted(set(val_titles))
    else:
        ranked = sorted(titles, key=title_hash)
        val = [t for t in ranked if title_hash(t) < val_fraction]
        if len(titles) >= 2 and not val:
            val = ranked[:1]
        if len(titles) >= 2 and len(val) == len(titles):
            val = val[:-1]
    train = [t for t in titles if t not in set(val)]
    return train, val


def deal_titles(infos: list[dict], world: int, rng: np.random.Generator | None = None) -> list[list]:
    """Shards (``shard_info`` dicts) -> ``world`` lists with about equal track counts.

    Titles are taken in random order (``rng``; sorted by title_id without one) and each goes to
    the rank with the fewest tracks so far, so every rank gets a similar number of steps."""
    order = sorted(infos, key=lambda i: i["title_id"])
    if rng is not None:
        order = [order[i] for i in rng.permutation(len(order))]
    out, load = [[] for _ in range(world)], np.zeros(world)
    for info in order:
        r = int(np.argmin(load))
        out[r].append(info)
        load[r] += info["tracks"]
    return out


# ------------------------------------------------------------------------------- names
def source_name(info: dict) -> str:
    """The file name of a shard's source video (``title_1.mp4``)."""
    return info["source_uri"].rstrip("/").split("/")[-1]


def resolve_titles(infos: list[dict], names) -> list[dict]:
    """Shard infos of ``names`` in order; a name is a title_id, its source file name or that
    name without its extension (the one rule every command uses). Unknown or ambiguous names
    raise ``ValueError``."""
    out = []
    for name in names or ():
        hits = [i for i in infos if name == i["title_id"]] or \
               [i for i in infos if name in (source_name(i), source_name(i).rsplit(".", 1)[0])]
        if not hits:
            raise ValueError(f"title {name!r} is in no shard (title_id or source file name)")
        if len(hits) > 1:
            raise ValueError(f"title {name!r} names {len(hits)} shards: "
                             f"{sorted(h['title_id'] for h in hits)}; use the title_id")
        out.append(hits[0])
    return out


# ------------------------------------------------------------------------------- samples
def _vectors(arr, dim: int) -> np.ndarray:
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


def _title_codes(col) -> np.ndarray:
    """String column -> (n,) int64 rank of each value among the sorted distinct values
    (``np.unique``'s inverse), without building Python strings per row."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    enc = col.dictionary_encode() if not pa.types.is_dictionary(col.type) else col
    names = enc.dictionary.to_numpy(zero_copy_only=False)
    rank = np.empty(len(names), np.int64)
    rank[np.argsort(names, kind="stable")] = np.arange(len(names))
    return rank[enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)]


def _locate(key_title: np.ndarray, key_id: np.ndarray, title: np.ndarray,
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


def _list_values(col, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    faces = _vectors(pc.list_flatten(col), dim)[:, 0]
    return faces, np.repeat(np.arange(len(counts), dtype=np.int64), counts)


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
    of (samples, indices), ``collate(samples, idx)`` -> tensors for the head's batch_loss, the
    shard ``columns`` it reads and the array whose length counts the samples."""
    name: str
    build: Callable
    collate: Callable
    batches: Callable = None
    columns: tuple = TRAIN_COLUMNS
    count_key: str = "views"

    def stream(self, tables, batch_size, rng, identities=None, hp=None):
        return (self.batches or pooled_batches)(self, tables, batch_size, rng, identities, hp or {})


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


def _track_samples(table: pa.Table) -> dict | None:
    """Arrays shared by the track kinds: valid tracks with tracklets (+ row bookkeeping), decoded
    from the Arrow buffers by numpy (no per-track Python objects)."""
    dim = table.schema.field(TRACKLETS).type.value_type.list_size
    rows = np.flatnonzero(_is_sample(table))
    if not len(rows):
        return None
    all_titles = _title_codes(table[TITLE_ID])
    all_ids = table[TRACK_ID].to_numpy().astype(np.int64, copy=False)
    titles, ids = all_titles[rows], all_ids[rows]
    _, title_idx = np.unique(titles, return_inverse=True)
    first = pc.list_element(table[FRAME_IDX].take(pa.array(rows)), 0).to_numpy()
    # (n, 3, D): rows of the zero-copy view of the Arrow buffer, copied once, by the collate
    views = _Rows([_vectors(table[TRACKLETS], dim)], np.zeros(len(rows), np.int32),
                  rows.astype(np.int64))
    arrays = dict(views=views, title=title_idx.astype(np.int64), track_id=ids,
                  first_frame=first.astype(np.int64))
    ctx = dict(dim=dim, rows=rows, titles=titles, ids=ids, all_titles=all_titles, all_ids=all_ids)
    return arrays, ctx


def _is_sample(table: pa.Table) -> np.ndarray:
    """(n,) bool: the track is a sample of the track kinds (valid, with tracklets)."""
    keep = pc.and_(table[IS_VALID], pc.is_valid(table[TRACKLETS]))
    return keep.to_numpy(zero_copy_only=False)


def _subset(arrays: dict, ok: np.ndarray) -> dict:
    keep = np.flatnonzero(ok)
    return {k: v.subset(keep) if isinstance(v, _Rows) else v[keep] for k, v in arrays.items()}


def build_views(table: pa.Table, identities=None) -> dict | None:
    """MvCorr: the three tracklets of every valid track that has them."""
    got = _track_samples(table)
    return got and got[0]


def build_triplets(table: pa.Table, identities=None) -> dict | None:
    """ImpTriplet: views + the hard negative's anchor tracklet (its mean without tracklets).

    The negatives are rows of the views' anchor tracklets and of ``mean_embedding``
    (:class:`_Rows`, no copy: the batch's collate gathers them). ``mean_embedding`` is read
    only for titles that need it (:func:`means_needed`)."""
    got = _track_samples(table)
    if got is None:
        return None
    arrays, c = got
    titles, rows = c["titles"], c["rows"]
    hard_col = table[HARD_NEGATIVE].take(pa.array(rows))
    has = pc.is_valid(hard_col).to_numpy(zero_copy_only=False)
    hard = hard_col.fill_null(0).to_numpy().astype(np.int64)
    other = np.where(has, _locate(titles, c["ids"], titles, hard), -1)
    row = np.where(has & (other < 0), _locate(c["all_titles"], c["all_ids"], titles, hard), -1)
    bases = [arrays["views"].bases[0][:, 0]]                 # the negative's anchor tracklet
    if (row >= 0).any():                                     # without tracklets: its mean
        if MEAN_EMBEDDING not in table.column_names:
            raise ValueError(f"hard negatives without tracklets need {MEAN_EMBEDDING!r}: read "
                             "the shard with TRIPLETS.columns (or all columns)")
        bases.append(_vectors(table[MEAN_EMBEDDING], c["dim"])[:, 0])
    mean = other < 0
    local = np.where(mean, row, rows[np.maximum(other, 0)])
    arrays["negative"] = _Rows(bases, mean.astype(np.int32) * (len(bases) - 1), local)
    return _subset(arrays, (other >= 0) | (row >= 0))


def means_needed(table: pa.Table) -> bool:
    """Whether a track of ``table`` that is no sample (invalid or without tracklets) is some
    track's hard negative, so a triplet takes its ``mean_embedding``. Track ids only (a table
    of several titles may read the column for nothing)."""
    sample = _is_sample(table)
    if sample.all():
        return False
    hard = table[HARD_NEGATIVE].drop_null().to_numpy()
    return bool(np.isin(table[TRACK_ID].to_numpy()[~sample], hard).any())


def build_clusters(table: pa.Table, identities=None) -> dict | None:
    """BCL: views + cluster labels; weak mode (no ``identities``) each track its own cluster
    with its cannot-link partners as CSR sample indices, supervised mode identity ids."""
    got = _track_samples(table)
    if got is None:
        return None
    arrays, c = got
    titles, ids = c["titles"], c["ids"]
    if identities is not None:
        names_of = table[TITLE_ID].take(pa.array(c["rows"])).to_pylist()
        names = [identities.get((t, int(i))) for t, i in zip(names_of, ids)]
        ok = np.array([n is not None for n in names], bool)
        arrays = _subset(arrays, ok)
        arrays["labels"] = np.array([n for n in names if n is not None], np.int64)
        return arrays
    owner, partners = _list_values(table[CANNOT_LINK], c["rows"])
    partner = _locate(titles, ids, titles[owner], partners.astype(np.int64))
    hit = partner >= 0
    counts = np.bincount(owner[hit], minlength=len(ids))
    arrays["labels"] = np.arange(len(ids), dtype=np.int64)
    arrays["cl_ptr"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    arrays["cl_idx"] = partner[hit]
    return arrays


# ------------------------------------------------------------------------------- batching
class _Rows:
    """Rows of several per-title arrays addressed without copying them: row i is
    ``bases[part[i]][local[i]]``. Pools hold their (n, 3, D) views like this, so merging title
    groups into a pool and carrying a pool's rest over copy index arrays only; a batch's rows
    are gathered once, by its collate (``rows[idx]``)."""

    def __init__(self, bases: list, part: np.ndarray, local: np.ndarray):
        self.bases, self.part, self.local = bases, part, local
        self.shape = (len(part),) + bases[0].shape[1:]
        self.dtype, self.ndim = bases[0].dtype, bases[0].ndim

    @classmethod
    def concat(cls, arrays: list) -> "_Rows":
        bases, parts, locals_ = [], [], []
        for a in arrays:
            r = a if isinstance(a, _Rows) else cls([a], np.zeros(len(a), np.int32),
                                                   np.arange(len(a), dtype=np.int64))
            parts.append(r.part + len(bases))
            locals_.append(r.local)
            bases += r.bases
        return cls(bases, np.concatenate(parts), np.concatenate(locals_))

    def __len__(self) -> int:
        return len(self.part)

    def subset(self, idx: np.ndarray) -> "_Rows":
        """The rows ``idx`` as a new :class:`_Rows` (bases no row refers to are let go)."""
        part, local = self.part[idx], self.local[idx]
        used = np.unique(part)
        remap = np.zeros(len(self.bases), np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        return _Rows([self.bases[b] for b in used], remap[part], local)

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


_ROW_ARRAYS = ("views", "negative")       # per-sample float arrays pools address as _Rows


def concat_samples(parts: list[Samples]) -> Samples:
    """Samples of several title groups as one (cannot-link indices shifted); the big per-sample
    arrays are merged as :class:`_Rows` (no copy)."""
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
            arrays[k] = _Rows.concat([p.arrays[k] for p in parts])
        else:
            arrays[k] = np.concatenate([p.arrays[k] for p in parts])
    return Samples(kind, arrays)


def stream_batches(tables: Iterable[pa.Table], kind, batch_size: int,
                   rng: np.random.Generator, identities: dict | None = None, hp: dict | None = None
                   ) -> Iterator[tuple[Samples, np.ndarray]]:
    """Title groups -> (samples, batch indices) by ``kind``'s batcher (a :class:`SampleKind`
    or its name; :func:`pooled_batches` unless the kind has its own)."""
    return sample_kind(kind).stream(tables, batch_size, rng, identities, hp)


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
    out = {k: v.subset(idx) if isinstance(v, _Rows) else v[idx]
           for k, v in a.items() if k not in ("cl_ptr", "cl_idx")}
    if samples.weak:
        pos = np.full(len(samples), -1, np.int64)
        pos[idx] = np.arange(len(idx))
        rows, partner = _partners(a, idx, pos)
        keep = partner >= 0
        counts = np.bincount(rows[keep], minlength=len(idx))
        out["cl_ptr"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        out["cl_idx"] = partner[keep]
        out["labels"] = np.arange(len(idx), dtype=np.int64)
    return Samples(samples.kind, out, samples.meta)


def _partners(a: dict, idx: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def collate_views(samples: Samples, idx: np.ndarray) -> dict:
    return {"views": torch.from_numpy(samples.arrays["views"][idx])}


def collate_triplets(samples: Samples, idx: np.ndarray) -> dict:
    return {**collate_views(samples, idx),
            "negative": torch.from_numpy(samples.arrays["negative"][idx])}


def collate_clusters(samples: Samples, idx: np.ndarray) -> dict:
    """Views + labels; weak mode: batch-local labels and the (B, B) cannot-link mask."""
    a, out = samples.arrays, collate_views(samples, idx)
    out["labels"] = torch.from_numpy(a["labels"][idx])
    if samples.weak:
        pos = np.full(len(samples), -1, np.int64)
        pos[idx] = np.arange(len(idx))
        rows, cols = _partners(a, idx, pos)
        allowed = np.zeros((len(idx), len(idx)), bool)
        allowed[rows[cols >= 0], cols[cols >= 0]] = True
        out["labels"] = torch.arange(len(idx))
        out["allowed"] = torch.from_numpy(allowed)
    return out


# Each kind reads only its columns (``mean_embedding`` is a third of a shard: BCL and MvCorr skip
# it, ImpTriplet reads it only for titles whose hard negatives need it).
VIEW_COLUMNS = (TITLE_ID, TRACK_ID, FRAME_IDX, TRACKLETS, IS_VALID)
VIEWS = register_kind(SampleKind("views", build_views, collate_views, columns=VIEW_COLUMNS))
TRIPLETS = register_kind(SampleKind("triplets", build_triplets, collate_triplets, columns=Columns(
    VIEW_COLUMNS + (HARD_NEGATIVE,), lazy=[(MEAN_EMBEDDING, means_needed)])))
CLUSTERS = register_kind(SampleKind("clusters", build_clusters, collate_clusters,
                                    columns=VIEW_COLUMNS + (CANNOT_LINK,)))


# ------------------------------------------------------------------------------- frames (SSiam/TSiam)
FRAME_COLUMNS = (TITLE_ID, TRACK_ID, IS_VALID, MEAN_EMBEDDING, EMBEDDINGS, CANNOT_LINK)


def build_frames(table: pa.Table, identities=None) -> dict | None:
    """One title's valid tracks -> per-face ``x`` (F, D), ``track`` (F,) row, ``means`` (T, D)
    and ``cannot_link`` as lists of rows (meta). Tracks of several titles are kept apart by
    building per title (the frame batcher does)."""
    valid = table.filter(table[IS_VALID])
    if not valid.num_rows:
        return None
    x, track = faces_of(valid)
    ids = valid[TRACK_ID].to_numpy()
    row = {int(t): r for r, t in enumerate(ids)}
    links = [[row[int(o)] for o in (ls or ()) if int(o) in row]
             for ls in valid[CANNOT_LINK].to_pylist()]
    means = _vectors(valid[MEAN_EMBEDDING], x.shape[1])[:, 0]
    return dict(x=x, track=track, meta=dict(means=means, cannot_link=links))


def frame_batches(kind: SampleKind, tables, batch_size: int, rng: np.random.Generator,
                  identities=None, hp=None) -> Iterator[tuple[Samples, np.ndarray]]:
    """Per title (titles in the given order), ceil(faces / ``batch_size``) batches; each batch
    is ``hp['draw']`` (default 3000) face indices drawn uniformly with replacement; the kind's
    collate mines ``batch_size`` pairs from them. Memory: one title's faces."""
    draw = _draw_size(hp)
    for table in tables:
        for title in np.unique(table[TITLE_ID].to_numpy(zero_copy_only=False)):
            s = build_samples(table.filter(pc.equal(table[TITLE_ID], title)), kind,
                              required=False)
            if s is None or len(s) < 2:
                continue
            if kind.prepare is not None:
                kind.prepare(s, hp or {})
            s.meta["n_pairs"] = batch_size
            for _ in range(-(-len(s) // batch_size)):
                yield s, rng.integers(0, len(s), draw)


def _draw_size(hp) -> int:
    """Faces drawn per frame batch: ``hp['draw']``, default 3000."""
    return int((hp or {}).get("draw") or 3000)


@dataclass(frozen=True)
class FrameKind(SampleKind):
    """A frame kind: ``miner(samples, idx)`` -> :class:`~training.losses.siamese_miners.Pairs`
    on the drawn faces; ``prepare(samples, hp)`` runs once per title (TSiam's negatives)."""
    miner: Callable = None
    prepare: Callable = None


def collate_pairs(samples: Samples, idx: np.ndarray) -> dict:
    """The miner's pairs of the drawn faces ``idx`` -> ``first``, ``second`` (P, D), ``similar``."""
    x = torch.from_numpy(samples.arrays["x"][idx])
    pairs = samples.kind.miner(samples, idx, x)
    return {"first": x[pairs.first], "second": x[pairs.second], "similar": pairs.similar}


def frames_kind(name: str, miner: Callable, prepare: Callable | None = None) -> FrameKind:
    return register_kind(FrameKind(name, build_frames, collate_pairs, frame_batches,
                                   FRAME_COLUMNS, "x", miner=miner, prepare=prepare))


def _distances(samples: Samples, hp: dict, negatives=None) -> None:
    """Once per title: its faces' distances and neighbour lists (SSiam's nearest and farthest
    faces; with TSiam's ``negatives`` the nearest faces of related tracks), which every draw
    of the title mines from."""
    from training.losses.siamese_miners import FaceDistances
    a = samples.arrays
    samples.meta["distances"] = FaceDistances(a["x"], draw=_draw_size(hp), negatives=negatives,
                                              track=None if negatives is None else a["track"])


def _ssiam_miner(samples: Samples, idx: np.ndarray, x: torch.Tensor):
    from training.losses.siamese_miners import ssiam_pairs
    return ssiam_pairs(x, samples.meta["n_pairs"], idx, samples.meta.get("distances"))


def _tsiam_prepare(samples: Samples, hp: dict) -> None:
    from training.losses.siamese_miners import tsiam_negative_tracks
    m = samples.meta
    m["negatives"] = tsiam_negative_tracks(m["means"], m["cannot_link"], int(hp.get("n_far") or 25))
    _distances(samples, hp, m["negatives"])


def _tsiam_miner(samples: Samples, idx: np.ndarray, x: torch.Tensor):
    from training.losses.siamese_miners import tsiam_pairs
    track = torch.from_numpy(samples.arrays["track"][idx])
    return tsiam_pairs(x, track, samples.meta["negatives"], torch.from_numpy(idx),
                       samples.meta["n_pairs"], samples.meta.get("distances"))


SSIAM_FRAMES = frames_kind("ssiam-frames", _ssiam_miner, _distances)
TSIAM_FRAMES = frames_kind("tsiam-frames", _tsiam_miner, _tsiam_prepare)
