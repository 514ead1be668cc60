"""The track kinds: MvCorr's views, ImpTriplet's triplets, BCL's clusters. Each sample is a
valid track with its three tracklets; each kind reads only its columns (``mean_embedding`` is a
third of a shard: BCL and MvCorr skip it, ImpTriplet reads it only for titles whose hard
negatives need it).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from training.columns import (CANNOT_LINK, FRAME_IDX, HARD_NEGATIVE, IS_VALID, MEAN_EMBEDDING,
                              TITLE_ID, TRACK_ID, TRACKLETS)
from training.data.batching import partners
from training.data.decode import float_vectors, list_values, locate, title_codes
from training.data.samples import Rows, SampleKind, Samples, register_kind
from training.data.shards import Columns


def _track_samples(table: pa.Table) -> dict | None:
    """Arrays shared by the track kinds: valid tracks with tracklets (+ row bookkeeping), decoded
    from the Arrow buffers by numpy (no per-track Python objects)."""
    dim = table.schema.field(TRACKLETS).type.value_type.list_size
    rows = np.flatnonzero(_is_sample(table))
    if not len(rows):
        return None
    all_titles = title_codes(table[TITLE_ID])
    all_ids = table[TRACK_ID].to_numpy().astype(np.int64, copy=False)
    titles, ids = all_titles[rows], all_ids[rows]
    _, title_idx = np.unique(titles, return_inverse=True)
    first = pc.list_element(table[FRAME_IDX].take(pa.array(rows)), 0).to_numpy()
    # (n, 3, D): rows of the zero-copy view of the Arrow buffer, copied once, by the collate
    views = Rows([float_vectors(table[TRACKLETS], dim)], np.zeros(len(rows), np.int32),
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
    return {k: v.subset(keep) if isinstance(v, Rows) else v[keep] for k, v in arrays.items()}


def build_views(table: pa.Table, identities=None) -> dict | None:
    """MvCorr: the three tracklets of every valid track that has them."""
    got = _track_samples(table)
    return got and got[0]


def build_triplets(table: pa.Table, identities=None) -> dict | None:
    """ImpTriplet: views + the hard negative's anchor tracklet (its mean without tracklets).

    The negatives are rows of the views' anchor tracklets and of ``mean_embedding``
    (:class:`Rows`, no copy: the batch's collate gathers them). ``mean_embedding`` is read
    only for titles that need it (:func:`means_needed`)."""
    got = _track_samples(table)
    if got is None:
        return None
    arrays, c = got
    titles, rows = c["titles"], c["rows"]
    hard_col = table[HARD_NEGATIVE].take(pa.array(rows))
    has = pc.is_valid(hard_col).to_numpy(zero_copy_only=False)
    hard = hard_col.fill_null(0).to_numpy().astype(np.int64)
    other = np.where(has, locate(titles, c["ids"], titles, hard), -1)
    row = np.where(has & (other < 0), locate(c["all_titles"], c["all_ids"], titles, hard), -1)
    bases = [arrays["views"].bases[0][:, 0]]                 # the negative's anchor tracklet
    if (row >= 0).any():                                     # without tracklets: its mean
        if MEAN_EMBEDDING not in table.column_names:
            raise ValueError(f"hard negatives without tracklets need {MEAN_EMBEDDING!r}: read "
                             "the shard with TRIPLETS.columns (or all columns)")
        bases.append(float_vectors(table[MEAN_EMBEDDING], c["dim"])[:, 0])
    mean = other < 0
    local = np.where(mean, row, rows[np.maximum(other, 0)])
    arrays["negative"] = Rows(bases, mean.astype(np.int32) * (len(bases) - 1), local)
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
    owner, partners = list_values(table[CANNOT_LINK], c["rows"])
    partner = locate(titles, ids, titles[owner], partners.astype(np.int64))
    hit = partner >= 0
    counts = np.bincount(owner[hit], minlength=len(ids))
    arrays["labels"] = np.arange(len(ids), dtype=np.int64)
    arrays["cl_ptr"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    arrays["cl_idx"] = partner[hit]
    return arrays


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
        rows, cols = partners(a, idx, pos)
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
