"""Shards -> per-head training samples and batches, one title group at a time.

Nothing here reads a whole corpus. The driver lists shards and reads only their footers
(:func:`shard_info`: title, D, track count) to split titles (:func:`split_titles`) and deal
them to workers (:func:`deal_titles`, balanced by track count, reshuffled every epoch). A worker
streams its titles (:func:`read_title`: one shard, the training columns, prefetched one ahead),
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
(T, D); each batch draws ``draw`` faces of the title and its collate mines the pairs.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from harvest.schema import embedding_dim, read_metadata
from harvest.storage import is_local
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
    """One shard (= one title group) with ``columns``, tracks in ``track_id`` order."""
    fs, p = _fs(path)
    with fs.open(p, "rb") as f:
        table = pq.read_table(f, columns=list(columns))
    return table.sort_by([(TRACK_ID, "ascending")])


def iter_titles(paths: Iterable[str], columns=TRAIN_COLUMNS) -> Iterator[pa.Table]:
    """:func:`read_title` of each path in order, the next one read in a thread meanwhile."""
    paths = list(paths)
    if not paths:
        return
    with ThreadPoolExecutor(1) as pool:
        nxt = pool.submit(read_title, paths[0], columns)
        for path in paths[1:] + [None]:
            table = nxt.result()
            nxt = pool.submit(read_title, path, columns) if path else None
            yield table


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
    """Non-null fixed-size-list (of fixed-size lists) column -> float32 array (n, ..., dim)."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    flat = arr
    while pa.types.is_fixed_size_list(flat.type):
        flat = flat.flatten()
    return flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(arr), -1, dim)


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
    """Arrays shared by the track kinds: valid tracks with tracklets (+ row bookkeeping)."""
    dim = table.schema.field(MEAN_EMBEDDING).type.list_size
    keep = pc.and_(table[IS_VALID], pc.is_valid(table[TRACKLETS]))
    rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    if not len(rows):
        return None
    all_titles = table[TITLE_ID].to_numpy(zero_copy_only=False)
    all_ids = table[TRACK_ID].to_numpy()
    titles, ids = all_titles[rows], all_ids[rows]
    _, title_idx = np.unique(titles, return_inverse=True)
    first = pc.list_element(table[FRAME_IDX].take(pa.array(rows)), 0).to_numpy()
    arrays = dict(views=_vectors(table[TRACKLETS].take(pa.array(rows)), dim),     # (n, 3, D)
                  title=title_idx.astype(np.int64), track_id=ids, first_frame=first.astype(np.int64))
    ctx = dict(dim=dim, rows=rows, titles=titles, ids=ids, all_titles=all_titles, all_ids=all_ids,
               key_to_sample={(t, int(i)): s for s, (t, i) in enumerate(zip(titles, ids))})
    return arrays, ctx


def _subset(arrays: dict, ok: np.ndarray) -> dict:
    return {k: v[ok] for k, v in arrays.items()}


def build_views(table: pa.Table, identities=None) -> dict | None:
    """MvCorr: the three tracklets of every valid track that has them."""
    got = _track_samples(table)
    return got and got[0]


def build_triplets(table: pa.Table, identities=None) -> dict | None:
    """ImpTriplet: views + the hard negative's anchor tracklet (its mean without tracklets)."""
    got = _track_samples(table)
    if got is None:
        return None
    arrays, c = got
    tracklets, titles = arrays["views"], c["titles"]
    means = _vectors(table[MEAN_EMBEDDING], c["dim"])[:, 0]
    key_to_row = {(t, int(i)): r for r, (t, i) in enumerate(zip(c["all_titles"], c["all_ids"]))}
    hard = table[HARD_NEGATIVE].take(pa.array(c["rows"])).to_pylist()
    neg, ok = np.zeros((len(c["rows"]), c["dim"]), np.float32), np.zeros(len(c["rows"]), bool)
    for s, h in enumerate(hard):
        if h is None:
            continue
        other = c["key_to_sample"].get((titles[s], h))
        if other is not None:           # the negative's anchor tracklet
            neg[s], ok[s] = tracklets[other, 0], True
        elif (titles[s], h) in key_to_row:  # negative without tracklets: its mean embedding
            neg[s], ok[s] = means[key_to_row[(titles[s], h)]], True
    arrays = _subset(arrays, ok)
    arrays["negative"] = neg[ok]
    return arrays


def build_clusters(table: pa.Table, identities=None) -> dict | None:
    """BCL: views + cluster labels; weak mode (no ``identities``) each track its own cluster
    with its cannot-link partners as CSR sample indices, supervised mode identity ids."""
    got = _track_samples(table)
    if got is None:
        return None
    arrays, c = got
    titles, ids = c["titles"], c["ids"]
    if identities is not None:
        names = [identities.get((t, int(i))) for t, i in zip(titles, ids)]
        ok = np.array([n is not None for n in names], bool)
        arrays = _subset(arrays, ok)
        arrays["labels"] = np.array([n for n in names if n is not None], np.int64)
        return arrays
    cl = table[CANNOT_LINK].take(pa.array(c["rows"])).to_pylist()
    ptr, idx, k2s = [0], [], c["key_to_sample"]
    for s, partners in enumerate(cl):
        idx += [k2s[(titles[s], p)] for p in partners if (titles[s], p) in k2s]
        ptr.append(len(idx))
    arrays["labels"] = np.arange(len(c["rows"]), dtype=np.int64)
    arrays["cl_ptr"], arrays["cl_idx"] = np.asarray(ptr, np.int64), np.asarray(idx, np.int64)
    return arrays


# ------------------------------------------------------------------------------- batching
def concat_samples(parts: list[Samples]) -> Samples:
    """Samples of several title groups as one (cannot-link indices shifted)."""
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
    pool_size, parts, n, weak = SHUFFLE_BATCHES * batch_size, [], 0, False
    for table in tables:
        s = build_samples(table, kind, identities, required=False)
        if s is None:
            continue
        if s.weak:       # co-occurring tracks next to each other, contiguous batches
            s = take(s, np.lexsort((s.arrays["first_frame"], s.arrays["title"])))
            weak, pool_size = True, batch_size
        parts.append(s)
        n += len(s)
        if n >= pool_size + batch_size:        # keep >= batch_size back for the merged tail
            pool = concat_samples(parts)
            order = np.arange(n) if weak else rng.permutation(n)
            k = (n - batch_size) // batch_size
            for b in range(k):
                yield pool, order[b * batch_size:(b + 1) * batch_size]
            rest = order[k * batch_size:]
            parts, n = [take(pool, np.sort(rest) if weak else rest)], len(rest)
    if n:              # the rest in the fewest batches of at most batch_size
        pool = concat_samples(parts)
        order = np.arange(n) if weak else rng.permutation(n)
        for idx in np.array_split(order, -(-n // batch_size)):
            yield pool, idx


def take(samples: Samples, idx: np.ndarray) -> Samples:
    """The samples at ``idx`` (cannot-link partners outside ``idx`` dropped)."""
    a = samples.arrays
    out = {k: v[idx] for k, v in a.items() if k not in ("cl_ptr", "cl_idx")}
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


VIEWS = register_kind(SampleKind("views", build_views, collate_views))
TRIPLETS = register_kind(SampleKind("triplets", build_triplets, collate_triplets))
CLUSTERS = register_kind(SampleKind("clusters", build_clusters, collate_clusters))


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
    draw = int((hp or {}).get("draw") or 3000)
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


def _ssiam_miner(samples: Samples, idx: np.ndarray, x: torch.Tensor):
    from training.losses.siamese_miners import ssiam_pairs
    return ssiam_pairs(x, samples.meta["n_pairs"])


def _tsiam_prepare(samples: Samples, hp: dict) -> None:
    from training.losses.siamese_miners import tsiam_negative_tracks
    m = samples.meta
    m["negatives"] = tsiam_negative_tracks(m["means"], m["cannot_link"], int(hp.get("n_far") or 25))


def _tsiam_miner(samples: Samples, idx: np.ndarray, x: torch.Tensor):
    from training.losses.siamese_miners import tsiam_pairs
    track = torch.from_numpy(samples.arrays["track"][idx])
    return tsiam_pairs(x, track, samples.meta["negatives"], torch.from_numpy(idx),
                       samples.meta["n_pairs"])


SSIAM_FRAMES = frames_kind("ssiam-frames", _ssiam_miner)
TSIAM_FRAMES = frames_kind("tsiam-frames", _tsiam_miner, _tsiam_prepare)
