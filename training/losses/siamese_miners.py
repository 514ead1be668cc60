"""Pair miners of SSiam and TSiam (methods.md 4.3, 4.5), separate from the loss.

Both work on one draw of B candidate frames (``draw``: uniform with replacement) and return
:class:`Pairs` of indices into that draw: the positives (label 1) first, then the negatives
(label 0), ``n_pairs // 2`` positives and the rest negatives (the odd slot goes to the negatives,
as in the reference). Distances are the raw input features' sqrt(|a|^2 + |b|^2 - 2 a.b) in
float64; nothing here is differentiable.

Mining is vectorised, over the draw's *distinct* frames: a frame drawn k times gives k
identical distance rows, so each distinct frame is mined once (with the draw positions of every
column's first / second / last occurrence, which settle the reference's index-order ties) and
the result is copied to its draw positions. The frame kinds prepare a ``FaceDistances`` per
title (:mod:`training.losses.face_distances`, made once per title: float32 distances pick each
face's nearest and farthest faces with a bound on their error, the picked ones get exact
float64 distances): a frame whose answer is provably inside its lists is mined from them (O(L) per frame), the others
from exact float64 distances to the draw's distinct frames, block by block (without lists, all
of them; or from a title's whole matrix when it fits ``cache_mb``). TSiam's positives are always
mined within blocks of whole tracks. Distances add the norms first, as the reference, so a
symmetric block gives mutual pairs equal distances. The dense B x B versions (``*_dense``) are
kept as the reference the benchmark (``bench/train.py mining``) compares against.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from training.losses.face_distances import BLOCK_ROWS, FaceDistances, Lists


class Pairs(NamedTuple):
    first: torch.Tensor    # (P,) int64 indices into the draw
    second: torch.Tensor   # (P,) int64
    similar: torch.Tensor  # (P,) int64, 1 = positive, 0 = negative


def draw(n_frames: int, b: int = 3000, generator: torch.Generator | None = None) -> torch.Tensor:
    """(b,) frame indices drawn uniformly with replacement (MATLAB ``randi``)."""
    if n_frames < 1:
        raise ValueError("no frames to draw from")
    return torch.randint(n_frames, (b,), generator=generator)


def distance_matrix(x: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) sqrt(|a|^2 + |b|^2 - 2 a.b) in float64; negative rounding -> 0 (the
    reference takes the real part of the square root)."""
    x = x.detach().to(torch.float64)
    sq = (x * x).sum(dim=1)
    return (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp(min=0).sqrt()


def _split(n_pairs: int) -> tuple[int, int]:
    if n_pairs < 2:
        raise ValueError("n_pairs must be at least 2")
    return n_pairs // 2, n_pairs - n_pairs // 2


def _pack(pos_i, pos_j, neg_i, neg_j) -> Pairs:
    first, second = torch.cat([pos_i, neg_i]), torch.cat([pos_j, neg_j])
    similar = torch.cat([torch.ones(len(pos_i), dtype=torch.int64),
                         torch.zeros(len(neg_i), dtype=torch.int64)]).to(first.device)
    return Pairs(first, second, similar)


def ssiam_neighbours_dense(x: torch.Tensor):
    """-> (nn, r, fn, f): for each row of ``x`` (B, D), column 1 of its stably sorted distance
    row (NN, distance r) and the last column (FN, distance f), as the reference's ``sort``.
    Found without sorting: column 0 = first minimum, column 1 = first minimum once column 0 is
    masked, last column = last maximum. Column 0 is taken as the point itself, which is wrong
    for a frame drawn twice (4.3 step 3); kept for fidelity."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("x must be (B, D) with B >= 2")
    d = distance_matrix(x)
    rows = torch.arange(d.shape[0], device=d.device)
    col0 = d.argmin(dim=1)
    masked = d.clone()
    masked[rows, col0] = float("inf")
    nn = masked.argmin(dim=1)
    fn = d.shape[1] - 1 - d.flip(1).argmax(dim=1)
    return nn, d[rows, nn], fn, d[rows, fn]


def ssiam_pairs_dense(x: torch.Tensor, n_pairs: int = 128) -> Pairs:
    """The dense B x B SSiam reference of :func:`ssiam_pairs`. SSiam mining (4.3) on the
    features ``x`` (B, D) of one draw: positives (i, NN(i)) for
    the K samples of largest r_i, negatives (i, FN(i)) for the K samples of smallest f_i
    (:func:`ssiam_neighbours`); ties keep index order (MATLAB's stable sort)."""
    k_pos, k_neg = _split(n_pairs)
    nn, r, fn, f = ssiam_neighbours_dense(x)
    pos = torch.argsort(-r, stable=True)[:k_pos]
    neg = torch.argsort(f, stable=True)[:k_neg]
    return _pack(pos, nn[pos], neg, fn[neg])


def tsiam_negative_tracks(means: np.ndarray, cannot_link: Sequence[Sequence[int]],
                          n_far: int = 25, block: int = 1024) -> sp.csr_matrix:
    """(T, T) symmetric bool relation "may serve as negatives" between the T tracks of a title.

    ``cannot_link[t]``: row indices of the tracks co-occurring with track t. A track with no
    cannot-link (a singleton) takes its ``n_far`` farthest tracks by the Euclidean distance of
    the mean features (4.5); the relation is then symmetrised. Farthest tracks are found in row
    blocks: O(T^2 D) time, O(block T) memory.
    """
    means = np.asarray(means, np.float64)
    t = len(means)
    if len(cannot_link) != t:
        raise ValueError("cannot_link needs one entry per track")
    rows = [np.full(len(c), i) for i, c in enumerate(cannot_link)]
    cols = [np.asarray(c, np.int64) for c in cannot_link]
    singles = np.array([i for i, c in enumerate(cannot_link) if len(c) == 0], np.int64)
    k = min(n_far, t - 1)
    if k > 0:
        sq = (means * means).sum(1)
        for s in range(0, len(singles), block):
            idx = singles[s:s + block]
            d2 = sq[idx, None] + sq[None, :] - 2 * means[idx] @ means.T
            d2[np.arange(len(idx)), idx] = -np.inf                     # never itself
            far = np.argpartition(-d2, k - 1, axis=1)[:, :k]
            rows.append(np.repeat(idx, k))
            cols.append(far.ravel())
    empty = [np.zeros(0, np.int64)]
    r, c = np.concatenate(rows + empty), np.concatenate(cols + empty)
    rel = sp.csr_matrix((np.ones(len(r), bool), (r, c)), shape=(t, t))
    return (rel + rel.T).astype(bool).tocsr()


def tsiam_pairs_dense(x: torch.Tensor, track: torch.Tensor, negatives: sp.spmatrix,
                      frame: torch.Tensor | None = None, n_pairs: int = 128) -> Pairs:
    """The dense B x B TSiam reference of :func:`tsiam_pairs`. TSiam mining (4.5) on one
    draw: ``x`` (B, D) features, ``track`` (B,) track row of each
    candidate, ``negatives`` from :func:`tsiam_negative_tracks`, ``frame`` (B,) optional global
    frame ids (a frame drawn twice is never paired with itself).

    Positives: two frames of the same track; negatives: frames of two tracks related by
    ``negatives``. Which pairs are kept is not documented [unverified]; this follows SSiam's
    hardness rule: each candidate's farthest same-track frame (distance r_i) and nearest
    negative frame (f_i); the K of largest r_i and the K of smallest f_i, ties in index order.
    Fewer pairs come back when the draw holds fewer candidates.
    """
    if x.ndim != 2 or track.shape != (x.shape[0],):
        raise ValueError("x must be (B, D) and track (B,)")
    k_pos, k_neg = _split(n_pairs)
    d = distance_matrix(x)
    b = d.shape[0]
    ids = torch.arange(b, device=d.device) if frame is None else frame.to(d.device)
    tr = track.to(d.device)
    uniq, inv = torch.unique(tr, return_inverse=True)
    u = uniq.cpu().numpy()
    sub = torch.as_tensor(negatives[u][:, u].toarray(), device=d.device)     # (U, U) bool
    same = (tr[:, None] == tr[None, :]) & (ids[:, None] != ids[None, :])
    neg = sub[inv][:, inv]
    pos_d = d.masked_fill(~same, float("-inf"))
    pj = pos_d.argmax(dim=1)
    r = pos_d.gather(1, pj[:, None]).squeeze(1)
    neg_d = d.masked_fill(~neg, float("inf"))
    nj = neg_d.argmin(dim=1)
    f = neg_d.gather(1, nj[:, None]).squeeze(1)
    pos = torch.argsort(-r, stable=True)[:k_pos]
    pos = pos[torch.isfinite(r[pos])]
    negs = torch.argsort(f, stable=True)[:k_neg]
    negs = negs[torch.isfinite(f[negs])]
    return _pack(pos, pj[pos], negs, nj[negs])


class _Draw(NamedTuple):
    """A draw's distinct frames: ``faces`` (U,) ids ordered by first draw position, ``inv`` (B,)
    distinct index of each position, ``first``/``second``/``last`` (U,) draw positions (second:
    -1 for a frame drawn once)."""
    faces: np.ndarray
    inv: np.ndarray
    first: np.ndarray
    second: np.ndarray
    last: np.ndarray


def _distinct(frame: np.ndarray) -> _Draw:
    b = len(frame)
    uniq, first, inv, count = np.unique(frame, return_index=True, return_inverse=True,
                                        return_counts=True)
    order = np.argsort(first, kind="stable")           # columns in first-position order
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    inv = rank[inv.ravel()]
    pos_sorted = np.argsort(inv, kind="stable")        # positions grouped by frame, ascending
    starts = np.concatenate([[0], np.cumsum(count[order])[:-1]])
    cnt = count[order]
    second = np.where(cnt >= 2, pos_sorted[np.minimum(starts + 1, b - 1)], -1)
    last = pos_sorted[starts + cnt - 1]
    return _Draw(uniq[order], inv, first[order].astype(np.int64), second.astype(np.int64),
                 last.astype(np.int64))


def _as_dist(x: torch.Tensor, frame, dist):
    """-> (distances, the draw's distinct frames, their keys into the distances: None when they
    are all of its faces, in order). Without a title matrix or lists the distinct frames' rows
    are computed block by block (O(U^2 D), O(BLOCK_ROWS U) memory)."""
    if frame is None:
        ids = np.arange(x.shape[0])
    else:
        ids = np.asarray(frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor)
                         else frame, np.int64)
    d = _distinct(ids)
    if dist is not None and (dist.full is not None or dist.near is not None
                             or dist.related is not None):
        return dist, d, d.faces
    feats = dist.x[d.faces] if dist is not None else x[torch.as_tensor(d.first)]
    return FaceDistances(feats, cache_mb=0), d, None


def _rows(dist: FaceDistances, keys, rows: np.ndarray, cols=None) -> np.ndarray:
    """Distances between the distinct frames ``rows`` and ``cols`` (None: all of them)."""
    if keys is None:
        return dist.block(rows, cols)
    k = keys[rows]
    return dist.block(k, keys if cols is None else k if cols is rows else keys[cols])


def _lookup(lists: Lists, d: _Draw, pos: np.ndarray, fill: float):
    """The lists of the draw's distinct frames restricted to drawn faces -> (faces (U, L),
    distances (``fill`` where not drawn), draw positions ``pos`` of each face (-1: none))."""
    faces = lists.face[d.faces]
    p = np.where(faces >= 0, pos[faces], -1)
    return faces, np.where(p >= 0, lists.dist[d.faces], fill), p


def _lexmin(v: np.ndarray, p: np.ndarray):
    """Per row, the smallest value and, among its ties, the earliest position ``p`` (>= 0) ->
    (column, value, position)."""
    m = v.min(1)
    cand = np.where((v == m[:, None]) & (p >= 0), p, np.iinfo(np.int64).max)
    k = cand.argmin(1)
    return k, m, cand[np.arange(len(v)), k]


def _positions(d: _Draw, n: int) -> np.ndarray:
    """(3, n) first, second and last draw position of each of the title's n faces (-1: none)."""
    pos = np.full((3, n), -1, np.int64)
    pos[:, d.faces] = d.first, d.second, d.last
    return pos


def _ssiam_lists(dist: FaceDistances, d: _Draw) -> tuple[np.ndarray, np.ndarray]:
    """(4, U) nn position, r, fn position, f of the distinct frames from the title's lists (as
    :func:`_ssiam_block`), and (U,) ``sure``: False where the answer may lie outside a list."""
    rr, pos = np.arange(len(d.faces)), _positions(d, len(dist))
    faces, v, p = _lookup(dist.near, d, pos[0], np.inf)
    k0, m1, _ = _lexmin(v, p)                                    # column 0
    v[rr, k0] = np.inf
    _, m2, p2 = _lexmin(v, p)                                    # the first other minimum
    s0 = pos[1][faces[rr, k0]]                                   # column 0's second draw
    dup = (s0 >= 0) & (m2 >= m1)
    nn = np.where(dup, np.where(m2 == m1, np.minimum(s0, p2), s0), p2)
    bound = dist.near.bound[d.faces]
    sure = (m1 < bound) & ((m2 < bound) | (s0 >= 0))
    _, w, last = _lookup(dist.far, d, pos[2], -np.inf)
    big = w.max(1)
    fn = np.where(w == big[:, None], last, -1).max(1)            # the last of the farthest
    sure &= big > dist.far.bound[d.faces]
    return np.stack([np.where(sure, nn, 0), np.where(dup, m1, m2), fn, big]), sure


def _ssiam_block(v: np.ndarray, rows: np.ndarray, d: _Draw) -> np.ndarray:
    """(4, R) nn position, r, fn position, f of the distinct frames ``rows`` from their
    distances ``v`` (R, U) to every distinct frame (first-position order; overwritten)."""
    cnt2, r_ = d.second >= 0, np.arange(len(rows))
    c0 = v.argmin(1)                                           # first minimum
    m1 = v[r_, c0]
    v[r_, c0] = np.inf
    c1 = v.argmin(1)                                           # first minimum elsewhere
    m2 = v[r_, c1]
    v[r_, c0] = m1
    # column 1 = the earliest other position holding the smallest remaining value: the
    # second draw of c0's frame (value m1) competes with c1's first position
    dup = cnt2[c0] & (m2 >= m1)
    nn_pos = np.where(dup, np.where(m2 == m1, np.minimum(d.second[c0], d.first[c1]),
                                    d.second[c0]), d.first[c1])
    r = np.where(dup, m1, m2)
    cf = v.argmax(1)                                           # last maximum: the first
    big = v[r_, cf]                                            # one, unless another
    v[r_, cf] = -np.inf                                        # column ties with it
    tied = np.flatnonzero(v[r_, v.argmax(1)] == big)
    v[r_, cf] = big
    fn_pos = d.last[cf]
    if len(tied):
        vt = v[tied]
        fn_pos[tied] = np.where(vt == big[tied, None], d.last[None, :], -1).max(1)
    return np.stack([nn_pos, r, fn_pos, big])


def ssiam_neighbours(x: torch.Tensor, frame=None, dist: FaceDistances | None = None):
    """-> (nn, r, fn, f): for each row of ``x`` (B, D), column 1 of its stably sorted distance
    row (NN, distance r) and the last column (FN, distance f), as the reference's ``sort``.
    Found without sorting: column 0 = first minimum, column 1 = the first minimum among the other
    positions, last column = last maximum. Column 0 is taken as the point itself, which is wrong
    for a frame drawn twice (4.3 step 3); kept for fidelity.

    ``frame`` (B,): ids of the drawn frames (equal id = same features; rows of a frame drawn
    twice are mined once); ``dist``: the title's :class:`FaceDistances` those ids index. With
    its lists most distinct frames are answered from them (O(U L)); the others blockwise:
    O(U^2) time beyond the distances, O(BLOCK_ROWS U) memory."""
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("x must be (B, D) with B >= 2")
    dist, d, keys = _as_dist(x, frame, dist)
    out, rows = np.empty((4, len(d.faces))), np.arange(len(d.faces))
    if dist.near is not None and keys is not None:
        out, sure = _ssiam_lists(dist, d)
        rows = np.flatnonzero(~sure)
    for s in range(0, len(rows), BLOCK_ROWS):
        block = rows[s:s + BLOCK_ROWS]
        out[:, block] = _ssiam_block(_rows(dist, keys, block), block, d)
    inv = d.inv
    return (torch.from_numpy(out[0][inv].astype(np.int64)), torch.from_numpy(out[1][inv]),
            torch.from_numpy(out[2][inv].astype(np.int64)), torch.from_numpy(out[3][inv]))


def ssiam_pairs(x: torch.Tensor, n_pairs: int = 128, frame=None,
                dist: FaceDistances | None = None) -> Pairs:
    """SSiam mining (4.3) on the features ``x`` (B, D) of one draw: positives (i, NN(i)) for
    the K samples of largest r_i, negatives (i, FN(i)) for the K samples of smallest f_i
    (:func:`ssiam_neighbours`, which takes ``frame`` and ``dist``); ties keep index order
    (MATLAB's stable sort)."""
    k_pos, k_neg = _split(n_pairs)
    nn, r, fn, f = ssiam_neighbours(x, frame, dist)
    pos = torch.argsort(-r, stable=True)[:k_pos]
    neg = torch.argsort(f, stable=True)[:k_neg]
    return _pack(pos, nn[pos], neg, fn[neg])


def _farthest_same_track(dist: FaceDistances, keys, d: _Draw, tr: np.ndarray):
    """(U,) first draw position of each distinct frame's farthest other frame of its track
    (the first of ties) and that distance (-inf: none). The frames sorted by track, in blocks
    of whole tracks (about BLOCK_ROWS frames) against themselves: O(U (BLOCK_ROWS + track size)
    D), not O(U^2 D); a block's distances are symmetric, so are the r of mutual pairs."""
    u = len(tr)
    order = np.argsort(tr, kind="stable")                 # by track, then first position
    ts = tr[order]
    starts = np.r_[np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]]), u]
    cuts = np.union1d(starts[np.searchsorted(starts, np.arange(0, u, BLOCK_ROWS))], [0, u])
    pj, r = np.empty(u, np.int64), np.empty(u)
    for s, e in itertools.pairwise(cuts):
        rows, r_ = order[s:e], np.arange(e - s)
        same = ts[s:e, None] == ts[None, s:e]
        same[r_, r_] = False                                      # never the frame itself
        v = np.where(same, _rows(dist, keys, rows, rows), -np.inf)
        j = v.argmax(1)                                           # first of the farthest
        pj[rows], r[rows] = d.first[rows[j]], v[r_, j]
    return pj, r


def _nearest_related(dist: FaceDistances, keys, d: _Draw, tr: np.ndarray, negatives):
    """(U,) first draw position of each distinct frame's nearest frame of a related track (the
    first of ties) and that distance (inf: none): from the title's lists where they are sure
    (made with the same ``negatives``), blockwise against every distinct frame otherwise."""
    u = len(tr)
    nj, f, rows = np.zeros(u, np.int64), np.empty(u), np.arange(u)
    if dist.related is not None and keys is not None and dist.negatives is negatives:
        _, v, p = _lookup(dist.related, d, _positions(d, len(dist))[0], np.inf)
        _, f, nj = _lexmin(v, p)
        bound = dist.related.bound[d.faces]
        sure = (f < bound) | np.isinf(bound)
        nj = np.where(np.isfinite(f), nj, 0)
        rows = np.flatnonzero(~sure)
    if len(rows):
        ut, tinv = np.unique(tr, return_inverse=True)
        rel = np.asarray(negatives[ut][:, ut].toarray(), bool)       # (T', T') bool
        for s in range(0, len(rows), BLOCK_ROWS):
            block = rows[s:s + BLOCK_ROWS]
            vn = np.where(rel[tinv[block]][:, tinv], _rows(dist, keys, block), np.inf)
            j = vn.argmin(1)                                         # first of the nearest
            nj[block], f[block] = d.first[j], vn[np.arange(len(block)), j]
    return nj, f


def tsiam_pairs(x: torch.Tensor, track: torch.Tensor, negatives: sp.spmatrix,
                frame: torch.Tensor | None = None, n_pairs: int = 128,
                dist: FaceDistances | None = None) -> Pairs:
    """TSiam mining (4.5) on one draw: ``x`` (B, D) features, ``track`` (B,) track row of each
    candidate, ``negatives`` from :func:`tsiam_negative_tracks`, ``frame`` (B,) optional global
    frame ids (a frame drawn twice is never paired with itself; ``dist``: the title's
    :class:`FaceDistances` they index).

    Positives: two frames of the same track; negatives: frames of two tracks related by
    ``negatives``. Which pairs are kept is not documented [unverified]; this follows SSiam's
    hardness rule: each candidate's farthest same-track frame (distance r_i) and nearest
    negative frame (f_i); the K of largest r_i and the K of smallest f_i, ties in index order.
    Fewer pairs come back when the draw holds fewer candidates. Over the distinct frames:
    positives within track blocks (:func:`_farthest_same_track`), negatives from the title's
    lists or blockwise (:func:`_nearest_related`).
    """
    if x.ndim != 2 or track.shape != (x.shape[0],):
        raise ValueError("x must be (B, D) and track (B,)")
    k_pos, k_neg = _split(n_pairs)
    dist, d, keys = _as_dist(x, frame, dist)
    tr = track.detach().cpu().numpy().astype(np.int64)[d.first]      # track of each frame
    pj, r = _farthest_same_track(dist, keys, d, tr)
    nj, f = _nearest_related(dist, keys, d, tr, negatives)
    inv = d.inv
    pj, r = torch.from_numpy(pj[inv]), torch.from_numpy(r[inv])
    nj, f = torch.from_numpy(nj[inv]), torch.from_numpy(f[inv])
    pos = torch.argsort(-r, stable=True)[:k_pos]
    pos = pos[torch.isfinite(r[pos])]
    negs = torch.argsort(f, stable=True)[:k_neg]
    negs = negs[torch.isfinite(f[negs])]
    return _pack(pos, pj[pos], negs, nj[negs])
