"""Shards -> per-head training samples and batches, one title group at a time.

Nothing here reads a whole corpus. The driver lists shards and reads only their footers
(:func:`shard_info`: title, D, track count) to split titles (:func:`split_titles`) and deal
them to workers (:func:`deal_titles`, balanced by track count, reshuffled every epoch). A worker
streams its titles (:func:`read_title`: one shard, the training columns, prefetched one ahead),
turns each title group into samples (:func:`build_samples`: the hard negative and cannot-link
partners are always in the same title) and cuts batches (:func:`stream_batches`), holding at
most one title plus a small pool of samples. ``kind`` (from the registry) says what a head needs:

    views     (n, 3, D) float32  anchor, p1, p2 tracklets              (all kinds)
    negative  (n, D)    float32  hard negative's anchor tracklet       (triplets)
    labels    (n,)      int64    cluster id: own index or identity     (clusters)
    cl_ptr, cl_idx      CSR of cannot-link partners as sample indices  (clusters, weak mode)
    title     (n,)      int64    title index; ``track_id``, ``first_frame`` (n,) int64
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from harvest.schema import embedding_dim, read_metadata
from harvest.storage import is_local
from training.columns import (CANNOT_LINK, FRAME_IDX, HARD_NEGATIVE, IS_VALID, MEAN_EMBEDDING,
                              TITLE_ID, TRACK_ID, TRACKLETS, TRAIN_COLUMNS)

SAMPLE_KINDS = ("views", "triplets", "clusters")
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


# ------------------------------------------------------------------------------- samples
def _vectors(arr, dim: int) -> np.ndarray:
    """Non-null fixed-size-list (of fixed-size lists) column -> float32 array (n, ..., dim)."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    flat = arr
    while pa.types.is_fixed_size_list(flat.type):
        flat = flat.flatten()
    return flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(arr), -1, dim)


@dataclass
class Samples:
    """Per-track training arrays of one split (see module docstring)."""
    kind: str
    arrays: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.arrays["views"])

    @property
    def dim(self) -> int:
        return self.arrays["views"].shape[-1]

    @property
    def weak(self) -> bool:
        return "cl_ptr" in self.arrays


def build_samples(table: pa.Table, kind: str, identities: dict | None = None,
                  required: bool = True) -> Samples | None:
    """Valid tracks with tracklets of one or more whole title groups -> :class:`Samples`.

    ``identities`` ((title_id, track_id) -> int identity id, the same ids in every title)
    switches ``clusters`` to supervised mode: unlabelled tracks are dropped. With no usable
    sample: ``ValueError`` when ``required``, else None.
    """
    if kind not in SAMPLE_KINDS:
        raise ValueError(f"unknown sample kind {kind!r}")
    dim = table.schema.field(MEAN_EMBEDDING).type.list_size
    keep = pc.and_(table[IS_VALID], pc.is_valid(table[TRACKLETS]))
    all_titles = table[TITLE_ID].to_numpy(zero_copy_only=False)
    all_ids = table[TRACK_ID].to_numpy()
    rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    if not len(rows):
        if not required:
            return None
        raise ValueError(f"no usable training samples of kind {kind!r}")
    tracklets = _vectors(table[TRACKLETS].take(pa.array(rows)), dim)        # (n, 3, D)
    titles, ids = all_titles[rows], all_ids[rows]
    title_names, title_idx = np.unique(titles, return_inverse=True)
    first = pc.list_element(table[FRAME_IDX].take(pa.array(rows)), 0).to_numpy()
    arrays = dict(views=tracklets, title=title_idx.astype(np.int64), track_id=ids,
                  first_frame=first.astype(np.int64))
    key_to_sample = {(t, int(i)): s for s, (t, i) in enumerate(zip(titles, ids))}
    if kind == "triplets":
        means = _vectors(table[MEAN_EMBEDDING], dim)[:, 0]
        key_to_row = {(t, int(i)): r for r, (t, i) in enumerate(zip(all_titles, all_ids))}
        hard = table[HARD_NEGATIVE].take(pa.array(rows)).to_pylist()
        neg, ok = np.zeros((len(rows), dim), np.float32), np.zeros(len(rows), bool)
        for s, h in enumerate(hard):
            if h is None:
                continue
            other = key_to_sample.get((titles[s], h))
            if other is not None:           # the negative's anchor tracklet
                neg[s], ok[s] = tracklets[other, 0], True
            elif (titles[s], h) in key_to_row:  # negative without tracklets: its mean embedding
                neg[s], ok[s] = means[key_to_row[(titles[s], h)]], True
        arrays = {k: v[ok] for k, v in arrays.items()}
        arrays["negative"] = neg[ok]
    elif kind == "clusters" and identities is not None:
        names = [identities.get((t, int(i))) for t, i in zip(titles, ids)]
        ok = np.array([n is not None for n in names], bool)
        arrays = {k: v[ok] for k, v in arrays.items()}
        arrays["labels"] = np.array([n for n in names if n is not None], np.int64)
    elif kind == "clusters":
        cl = table[CANNOT_LINK].take(pa.array(rows)).to_pylist()
        ptr, idx = [0], []
        for s, partners in enumerate(cl):
            idx += [key_to_sample[(titles[s], p)] for p in partners if (titles[s], p) in key_to_sample]
            ptr.append(len(idx))
        arrays["labels"] = np.arange(len(rows), dtype=np.int64)
        arrays["cl_ptr"], arrays["cl_idx"] = np.asarray(ptr, np.int64), np.asarray(idx, np.int64)
    if not len(arrays["views"]):
        if not required:
            return None
        raise ValueError(f"no usable training samples of kind {kind!r}")
    return Samples(kind, arrays)


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


def stream_batches(tables: Iterable[pa.Table], kind: str, batch_size: int,
                   rng: np.random.Generator, identities: dict | None = None
                   ) -> Iterator[tuple[Samples, np.ndarray]]:
    """Title groups -> (samples, batch indices) of ``batch_size`` (the last few batches of an
    epoch share the rest evenly: each at least half a batch unless there is less in all).

    Weak-label cluster samples keep their title's first-frame order and are cut into
    contiguous batches, so co-occurring (cannot-link) tracks share a batch; other kinds are
    shuffled in a pool of ``SHUFFLE_BATCHES`` batches. Memory: one title plus the pool.
    """
    weak = kind == "clusters" and identities is None
    pool_size = batch_size if weak else SHUFFLE_BATCHES * batch_size
    parts, n = [], 0
    for table in tables:
        s = build_samples(table, kind, identities, required=False)
        if s is None:
            continue
        if weak:       # co-occurring tracks next to each other
            s = take(s, np.lexsort((s.arrays["first_frame"], s.arrays["title"])))
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
    return Samples(samples.kind, out)


def _partners(a: dict, idx: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in ``idx``, ``pos`` of the partner) for every cannot-link partner of ``idx``."""
    starts, counts = a["cl_ptr"][idx], a["cl_ptr"][idx + 1] - a["cl_ptr"][idx]
    rows = np.repeat(np.arange(len(idx)), counts)
    flat = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    return rows, pos[a["cl_idx"][flat]]


def collate(samples: Samples, idx: np.ndarray, device=None) -> dict[str, torch.Tensor]:
    """Tensors of one batch for ``registry`` batch_loss functions."""
    a = samples.arrays
    out = {"views": torch.from_numpy(a["views"][idx])}
    if samples.kind == "triplets":
        out["negative"] = torch.from_numpy(a["negative"][idx])
    if samples.kind == "clusters":
        out["labels"] = torch.from_numpy(a["labels"][idx])
        if samples.weak:
            pos = np.full(len(samples), -1, np.int64)
            pos[idx] = np.arange(len(idx))
            rows, cols = _partners(a, idx, pos)
            allowed = np.zeros((len(idx), len(idx)), bool)
            allowed[rows[cols >= 0], cols[cols >= 0]] = True
            out["labels"] = torch.arange(len(idx))
            out["allowed"] = torch.from_numpy(allowed)
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out

