"""Shards -> per-head training samples and batches.

Reading: :func:`read_tracks` uses Ray Data ``read_parquet`` (any fsspec/pyarrow URL or local
path) or, with ``engine="arrow"``, a plain pyarrow reader for small sets. Splitting is by title
(:func:`split_titles`). :func:`build_samples` keeps valid tracks with tracklets and makes the
arrays one head needs (``kind`` from the registry):

    views     (n, 3, D) float32  anchor, p1, p2 tracklets              (all kinds)
    negative  (n, D)    float32  hard negative's anchor tracklet       (triplets)
    labels    (n,)      int64    cluster id: own index or identity     (clusters)
    cl_ptr, cl_idx      CSR of cannot-link partners as sample indices  (clusters, weak mode)
    title     (n,)      int64    title index; ``first_frame`` (n,) int64 for batching
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from harvest.schema import N_TRACKLETS, embedding_dim, read_metadata
from harvest.storage import is_local
from training.columns import (CANNOT_LINK, FRAME_IDX, HARD_NEGATIVE, IS_VALID, MEAN_EMBEDDING,
                              TITLE_ID, TRACK_ID, TRACKLETS, TRAIN_COLUMNS)

SAMPLE_KINDS = ("views", "triplets", "clusters")


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
    """One dict per shard: ``path``, ``title_id``, ``source_uri``, ``dim`` (file metadata)."""
    out = []
    for path in list_shards(url):
        fs, p = _fs(path)
        with fs.open(p, "rb") as f:
            schema = pq.read_schema(f)
        meta = read_metadata(schema)
        out.append(dict(path=path, title_id=meta["title_id"], source_uri=meta["source_uri"],
                        dim=embedding_dim(schema)))
    return out


def read_tracks(url: str | list[str], columns=TRAIN_COLUMNS, engine: str = "ray") -> pa.Table:
    """All rows of the shards at ``url`` (or a list of shard paths) with ``columns``."""
    paths = list_shards(url) if isinstance(url, str) else list(url)
    if engine == "ray":
        import ray
        ds = ray.data.read_parquet(paths).select_columns(list(columns))
        tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
        table = pa.concat_tables(tables) if tables else None
        if table is None:
            raise ValueError(f"no rows in {url}")
    elif engine == "arrow":
        tables = []
        for path in paths:
            fs, p = _fs(path)
            with fs.open(p, "rb") as f:
                tables.append(pq.read_table(f, columns=list(columns)))
        table = pa.concat_tables(tables)
    else:
        raise ValueError(f"unknown engine {engine!r}")
    return table.sort_by([(TITLE_ID, "ascending"), (TRACK_ID, "ascending")])


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


def build_samples(table: pa.Table, kind: str, identities: dict | None = None) -> Samples:
    """Valid tracks with tracklets -> :class:`Samples` of ``kind``.

    ``identities`` ((title_id, track_id) -> identity) switches ``clusters`` to supervised mode:
    unlabelled tracks are dropped and labels are identity ids.
    """
    if kind not in SAMPLE_KINDS:
        raise ValueError(f"unknown sample kind {kind!r}")
    dim = table.schema.field(MEAN_EMBEDDING).type.list_size
    keep = pc.and_(table[IS_VALID], pc.is_valid(table[TRACKLETS]))
    all_titles = table[TITLE_ID].to_numpy(zero_copy_only=False)
    all_ids = table[TRACK_ID].to_numpy()
    rows = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
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
        ok = np.array([n is not None for n in names])
        uniq = {n: j for j, n in enumerate(sorted({n for n in names if n is not None}))}
        arrays = {k: v[ok] for k, v in arrays.items()}
        arrays["labels"] = np.array([uniq[n] for n in names if n is not None], np.int64)
    elif kind == "clusters":
        cl = table[CANNOT_LINK].take(pa.array(rows)).to_pylist()
        ptr, idx = [0], []
        for s, partners in enumerate(cl):
            idx += [key_to_sample[(titles[s], p)] for p in partners if (titles[s], p) in key_to_sample]
            ptr.append(len(idx))
        arrays["labels"] = np.arange(len(rows), dtype=np.int64)
        arrays["cl_ptr"], arrays["cl_idx"] = np.asarray(ptr, np.int64), np.asarray(idx, np.int64)
    if not len(arrays["views"]):
        raise ValueError(f"no usable training samples of kind {kind!r}")
    return Samples(kind, arrays)


# ------------------------------------------------------------------------------- batching
def make_batches(samples: Samples, batch_size: int, rng: np.random.Generator,
                 min_batches: int = 1) -> list[np.ndarray]:
    """Split sample indices into batches of about ``batch_size`` (a short tail is merged).

    Weak-label cluster samples are ordered by (title in random order, first frame) and cut into
    contiguous chunks from a random offset, so co-occurring (cannot-link) tracks share a batch;
    other kinds are shuffled. At least ``min_batches`` batches when there are enough samples.
    """
    n = len(samples)
    if samples.weak:
        a = samples.arrays
        title_rank = rng.permutation(int(a["title"].max()) + 1)[a["title"]]
        order = np.lexsort((a["first_frame"], title_rank))
        order = np.roll(order, -int(rng.integers(n)))
    else:
        order = rng.permutation(n)
    n_batches = min(max(n // batch_size, min_batches, 1), n)
    return np.array_split(order, n_batches)


def shard_batches(batches: list, rank: int, world: int) -> list:
    """Equal numbers of batches per rank (DDP needs the same step count on every rank)."""
    usable = (len(batches) // world) * world
    if usable == 0:
        raise ValueError(f"{len(batches)} batches cannot feed {world} workers")
    return batches[rank:usable:world]


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
            starts, ends = a["cl_ptr"][idx], a["cl_ptr"][idx + 1]
            counts = ends - starts
            rows = np.repeat(np.arange(len(idx)), counts)
            flat = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            cols = pos[a["cl_idx"][flat]]
            allowed = np.zeros((len(idx), len(idx)), bool)
            allowed[rows[cols >= 0], cols[cols >= 0]] = True
            out["labels"] = torch.arange(len(idx))
            out["allowed"] = torch.from_numpy(allowed)
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out

