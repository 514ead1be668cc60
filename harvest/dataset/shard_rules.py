"""The contract of one shard as rules: one function per rule over a view of the shard
(:class:`harvest.dataset.shard_view.ShardView`: its columns decoded once, shared by every
rule), run in order by ``harvest.dataset.validate.validate_table``.

A rule takes the view and returns its violations, human-readable, each naming at most
:data:`SHOWN` track ids. Three rules guard the rest: the schema (without a trustworthy
``mean_embedding`` nothing else can be read), nulls (null cells or null faces) and the list
lengths (every per-face list has ``n_faces`` entries: positions below assume aligned lists).
A new invariant is one function and one entry in :data:`RULES`, with its test in
``tests/test_validate.py``.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from harvest.dataset import schema as S
from harvest.dataset.shard import decode_crop
from harvest.dataset.shard_view import (PER_FACE, SHOWN, ShardView, fixed_vectors,
                                        flatten_lists, ids, is_unit, list_lengths,
                                        same_direction)
from harvest.miners.hard_positive import tracklet_seeds

# ------------------------------------------------------------------------------- guards
def schema_rule(table: pa.Table) -> tuple[list[str], int | None]:
    """Schema violations and D (None when the columns cannot be trusted for further checks)."""
    names = table.schema.names
    if S.MEAN_EMBEDDING not in names or not pa.types.is_fixed_size_list(
            table.schema.field(S.MEAN_EMBEDDING).type):
        return [f"schema: no fixed-size {S.MEAN_EMBEDDING!r} column, cannot tell D"], None
    dim = S.embedding_dim(table.schema)
    want = S.shard_schema(dim)
    out = [f"schema: missing column {n!r}" for n in want.names if n not in names]
    out += [f"schema: unexpected column {n!r}" for n in names if n not in want.names]
    for f in want:
        if f.name in names and S.loose_type(table.schema.field(f.name).type) != \
                S.loose_type(f.type):
            out.append(f"schema: column {f.name!r} is {table.schema.field(f.name).type}, "
                       f"expected {f.type}")
    broken = bool(out)
    if not out and names != want.names:
        out.append(f"schema: column order {names} != {want.names}")
    return out, (None if broken else dim)


def metadata_rule(v: ShardView) -> list[str]:
    """Every required metadata field, and ``embedding_dim`` = the schema's D."""
    out = []
    missing = [k for k in S.METADATA_FIELDS if k not in v.meta]
    if missing:
        out.append(f"metadata: missing fields {missing}")
    if "embedding_dim" in v.meta and v.meta["embedding_dim"] != v.dim:
        out.append(f"metadata: embedding_dim {v.meta['embedding_dim']} != D {v.dim} of the schema")
    return out


def null_rule(v: ShardView) -> list[str]:
    """No null cell in a non-nullable column, no null face inside a per-face list."""
    t = v.table
    out = [f"column {f.name!r}: {t.column(f.name).null_count} null value(s)"
           for f in t.schema if not f.nullable and t.column(f.name).null_count]
    return out + [f"column {name!r}: null faces inside the lists" for name in PER_FACE
                  if pc.list_flatten(v.col(name)).null_count]


def identity_rule(v: ShardView) -> list[str]:
    """One title (the metadata's), unique track ids, at least one face per track."""
    out = []
    titles = v.col(S.TITLE_ID).unique().to_pylist()
    if "title_id" in v.meta and titles != [v.meta["title_id"]]:
        out.append(f"title_id column {titles} != metadata title_id {v.meta['title_id']!r}")
    uniq, counts = np.unique(v.tid, return_counts=True)
    if (counts > 1).any():
        out.append(f"track_id not unique: {ids(uniq[counts > 1])}")
    if (v.n_faces < 1).any():
        out.append(f"n_faces < 1 in {ids(v.tid, v.n_faces < 1)}")
    return out


def list_length_rule(v: ShardView) -> list[str]:
    """Every per-face list has ``n_faces`` entries (the first column that does not is named)."""
    for name in PER_FACE:
        lengths = list_lengths(v.col(name))
        if (lengths != v.n_faces).any():
            return [f"{name}: length != n_faces in {ids(v.tid, lengths != v.n_faces)}"]
    return []


# ------------------------------------------------------------------------------- rules
def frame_rule(v: ShardView) -> list[str]:
    """Frames strictly increasing inside [0, frame_count), timestamps finite and not
    decreasing, every frame of a track inside its shot."""
    out, tid, frames, row = [], v.tid, v.frames, v.row
    same = row[1:] == row[:-1]
    if (bad := same & (np.diff(frames) <= 0)).any():
        out.append(f"frame_idx not strictly increasing in {ids(tid[row[1:][bad]])}")
    stamps = pc.list_flatten(v.col(S.TIMESTAMPS)).to_numpy(zero_copy_only=False)
    if (bad := ~np.isfinite(stamps)).any():
        out.append(f"timestamps: non-finite values in {ids(tid[row[bad]])}")
    if (bad := same & (np.diff(stamps) < 0)).any():
        out.append(f"timestamps decreasing in {ids(tid[row[1:][bad]])}")
    frame_count = v.meta.get("frame_count")
    if frame_count is not None and (bad := (frames < 0) | (frames >= frame_count)).any():
        out.append(f"frame_idx outside [0, {frame_count}) in {ids(tid[row[bad]])}")
    bounds = v.meta.get("shot_boundaries")
    if bounds is not None:
        b = np.asarray(bounds, dtype=np.int64)
        if len(b) == 0 or b[0] != 0 or (np.diff(b) <= 0).any():
            out.append(f"metadata: shot_boundaries must be strictly increasing from 0, got "
                       f"{bounds[:10]}")
        elif (bad := np.searchsorted(b, frames, side="right") - 1 != v.shot_id[row]).any():
            out.append(f"track frames outside its shot_id (crosses a shot boundary or "
                       f"wrong shot) in {ids(tid[row[bad]])}")
    return out


def _box_violations(v: ShardView, name: str, row: np.ndarray) -> list[str]:
    boxes = fixed_vectors(pc.list_flatten(v.col(name)), 4)
    ok = np.isfinite(boxes).all(1) & (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
    return [] if ok.all() else [f"{name} not finite with x1<x2, y1<y2 in {ids(v.tid[row[~ok]])}"]


def box_rule(v: ShardView) -> list[str]:
    """Detected boxes finite with x1 < x2, y1 < y2."""
    return _box_violations(v, S.BOXES, v.row)


def interpolation_rule(v: ShardView) -> list[str]:
    """``interp_frame_idx`` + ``frame_idx`` cover every frame of each track's span exactly once
    (interpolated frames strictly inside the span, none detected), with one good box each."""
    tid, interp = v.tid, v.col(S.INTERP_FRAME_IDX)
    lengths = list_lengths(interp)
    if (bad := list_lengths(v.col(S.INTERP_BOXES)) != lengths).any():
        return [f"{S.INTERP_BOXES}: length != {S.INTERP_FRAME_IDX} in {ids(tid, bad)}"]
    first = np.full(len(tid), np.iinfo(np.int64).max)
    last = np.full(len(tid), -1, np.int64)
    np.minimum.at(first, v.row, v.frames)
    np.maximum.at(last, v.row, v.frames)
    out = []
    if (bad := v.n_faces + lengths != last - first + 1).any():
        out.append(f"frame_idx + interp_frame_idx do not count every frame of the span in "
                   f"{ids(tid, bad)}")
    i_frames, i_row = (a.astype(np.int64) for a in flatten_lists(interp))
    keys = np.r_[v.row.astype(np.int64) * (1 << 32) + v.frames, i_row * (1 << 32) + i_frames]
    bad = (i_frames <= first[i_row]) | (i_frames >= last[i_row])
    if bad.any() or len(np.unique(keys)) != len(keys):
        out.append(f"interp_frame_idx outside the span or on a detected frame in "
                   f"{ids(tid[i_row[bad]]) if bad.any() else 'some track(s)'}")
    same = i_row[1:] == i_row[:-1]
    if (bad := same & (np.diff(i_frames) <= 0)).any():
        out.append(f"interp_frame_idx not strictly increasing in {ids(tid[i_row[1:][bad]])}")
    return out + _box_violations(v, S.INTERP_BOXES, i_row)


def finite_rule(v: ShardView) -> list[str]:
    """Landmarks, scores, sizes, blur and track quality finite."""
    out = []
    for name in (S.LANDMARKS, S.DET_SCORE, S.FACE_SIZE, S.BLUR):
        values = pc.list_flatten(v.col(name))
        values = fixed_vectors(values, 10) if name == S.LANDMARKS else values.to_numpy()[:, None]
        if not (ok := np.isfinite(values).all(1)).all():
            out.append(f"{name}: non-finite values in {ids(v.tid[v.row[~ok]])}")
    if not np.isfinite(v.col(S.TRACK_QUALITY).to_numpy()).all():
        out.append(f"{S.TRACK_QUALITY}: non-finite values")
    return out


def unit_norm_rule(v: ShardView) -> list[str]:
    """Embeddings, mean embeddings and tracklets are unit vectors."""
    out = []
    if not (ok := is_unit(v.emb)).all():
        out.append(f"embeddings not unit-norm in {ids(v.tid[v.row[~ok]])}")
    if not (ok := is_unit(v.mean_emb)).all():
        out.append(f"mean_embedding not unit-norm in {ids(v.tid, ~ok)}")
    if not (ok := is_unit(v.tracklets).all(1)).all():
        out.append(f"tracklets not unit-norm in {ids(v.tid[v.has_tl][~ok])}")
    return out


def tracklet_member_rule(v: ShardView) -> list[str]:
    """Tracklet members: N_TRACKLETS disjoint non-empty lists of positions inside the track
    where tracklets are set."""
    m, out = v.members, []
    if m.bad_lists.any():
        out.append(f"tracklet_members: not {S.N_TRACKLETS} lists (non-empty when tracklets are "
                   f"set) in {ids(v.tid, m.bad_lists)}")
    if m.out_of_range.any():
        out.append(f"tracklet_members: positions outside [0, n_faces) in "
                   f"{ids(v.tid[m.pos_row[m.out_of_range]])}")
    if len(m.overlapping):
        out.append(f"tracklet_members: lists not disjoint in {ids(v.tid[m.overlapping])}")
    return out


def mean_rule(v: ShardView) -> list[str]:
    """``mean_embedding`` and each tracklet are the normalised means of their faces."""
    out, has = [], v.n_faces > 0
    if has.any():
        ok = same_direction(np.add.reduceat(v.emb, v.starts[:-1][has], axis=0), v.mean_emb[has])
        if not ok.all():
            out.append(f"mean_embedding is not the normalised mean of the track's embeddings "
                       f"in {ids(v.tid[has][~ok])}")
    m = v.members
    if m.ok and v.has_tl.any():
        take = v.has_tl[m.inner_row][m.pos_inner]   # faces of lists of tracks with tracklets
        seg = m.pos_inner[take]
        cuts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
        sums = np.add.reduceat(v.emb[(v.starts[m.pos_row] + m.pos)[take]], cuts, axis=0)
        ok = same_direction(sums.reshape(-1, S.N_TRACKLETS, v.dim), v.tracklets).all(1)
        if not ok.all():
            out.append(f"tracklets are not the normalised means of their tracklet_members in "
                       f"{ids(v.tid[v.has_tl][~ok])}")
    return out


def crop_rule(v: ShardView) -> list[str]:
    """As many crops as positions, positions strictly increasing in [0, n_faces), every crop a
    decodable S x S RGB JPEG; and what the metadata's crops mode promises (none: no crops; all:
    every face; sample: <= crops_per_track + N_TRACKLETS crops including each tracklet's seed)."""
    tid, crops, positions = v.tid, v.col(S.CROPS), v.col(S.CROP_POSITIONS)
    n_crops = list_lengths(crops)
    if (bad := n_crops != list_lengths(positions)).any():
        return [f"crops: len(crops) != len(crop_positions) in {ids(tid, bad)}"]
    out = []
    pos, row = (a.astype(np.int64) for a in flatten_lists(positions))
    if (bad := (pos < 0) | (pos >= v.n_faces[row])).any():
        out.append(f"crop_positions outside [0, n_faces) in {ids(tid[row[bad]])}")
    if (bad := (row[1:] == row[:-1]) & (np.diff(pos) <= 0)).any():
        out.append(f"crop_positions not strictly increasing in {ids(tid[row[1:][bad]])}")
    size = v.meta.get("crop_size")
    data, drow = flatten_lists(crops)
    bad = np.zeros(len(data), bool)
    for i, blob in enumerate(data):
        img = decode_crop(blob)
        bad[i] = img is None or img.shape[0] != img.shape[1] or (
            size is not None and img.shape[:2] != (size, size))
    if bad.any():
        out.append(f"crops: not a decodable {size or 'S'}x{size or 'S'} 3-channel JPEG in "
                   f"{ids(tid[drow[bad]])}")
    return out + _crop_mode_violations(v, n_crops, pos)


def _crop_mode_violations(v: ShardView, n_crops: np.ndarray, pos: np.ndarray) -> list[str]:
    mode, tid, out = v.meta.get("crops"), v.tid, []
    if mode == "none" and (n_crops > 0).any():
        out.append(f"crops mode none but crops stored in {ids(tid, n_crops > 0)}")
    elif mode == "all" and (bad := n_crops != v.n_faces).any():
        out.append(f"crops mode all but not every face has a crop in {ids(tid, bad)}")
    elif mode == "sample" and v.meta.get("crops_per_track") is not None:
        limit = int(v.meta["crops_per_track"]) + S.N_TRACKLETS
        if (bad := n_crops > limit).any():
            out.append(f"crops mode sample: more than {limit} crops in {ids(tid, bad)}")
        if v.members.ok:      # seeds re-derived from the stored embeddings and members
            members, missing = v.col(S.TRACKLET_MEMBERS), []
            cstart = np.r_[0, np.cumsum(n_crops)]
            for r in np.flatnonzero(v.has_tl):
                seeds = tracklet_seeds(v.emb[v.starts[r]:v.starts[r + 1]], members[int(r)].as_py())
                if not set(seeds) <= set(pos[cstart[r]:cstart[r + 1]].tolist()):
                    missing.append(r)
            if missing:
                out.append(f"crops mode sample: a tracklet seed face has no crop in "
                           f"{ids(tid[missing])}")
    return out


def min_length_rule(v: ShardView) -> list[str]:
    """A valid track spans at least ``min_track_frames`` frames (when given) and
    ``min_track_seconds`` less one detection stride (when the metadata has them)."""
    out, span = [], v.last - v.first + 1
    if v.min_track_frames is not None and (bad := v.valid & (span < v.min_track_frames)).any():
        out.append(f"valid track shorter than {v.min_track_frames} frames: {ids(v.tid, bad)}")
    m, fps = v.meta, v.meta.get("fps")
    if fps and m.get("min_track_seconds") is not None and m.get("det_stride") is not None:
        need = m["min_track_seconds"] - m["det_stride"] / fps
        if (bad := v.valid & (span / fps < need - 1e-9)).any():
            out.append(f"valid track shorter than {m['min_track_seconds']} s "
                       f"(stride tolerance {m['det_stride']}): {ids(v.tid, bad)}")
    return out


def _links(v: ShardView) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Cannot-link problems of the ids themselves, and the (source row, target row) pairs that
    name tracks of the title."""
    out, tid, n = [], v.tid, len(v.tid)
    links, src = flatten_lists(v.col(S.CANNOT_LINK))
    links = links.astype(np.int64)
    order = np.argsort(tid, kind="stable")
    at = np.minimum(np.searchsorted(tid[order], links), n - 1)
    exists = tid[order][at] == links
    if (~exists).any():
        out.append(f"cannot_link to track ids not in the title from {ids(tid[src[~exists]])}")
    if (links == tid[src]).any():
        out.append(f"cannot_link self-links in {ids(tid[src[links == tid[src]]])}")
    return out, src[exists].astype(np.int64), order[at[exists]].astype(np.int64)


def cannot_link_rule(v: ShardView) -> list[str]:
    """Cannot-links name tracks of the title, never themselves, once each, both ways, between
    valid tracks only; the hard negative is one of them."""
    out, src, dst = _links(v)
    tid, n = v.tid, len(v.tid)
    code = src * n + dst
    uniq, counts = np.unique(code, return_counts=True)
    if (counts > 1).any():
        out.append(f"cannot_link duplicates in {ids(tid[uniq[counts > 1] // n])}")
    if (~(sym := np.isin(dst * n + src, code))).any():
        out.append(f"cannot_link not symmetric from {ids(tid[src[~sym]])}")
    if (bad := ~(v.valid[src] & v.valid[dst])).any():
        out.append(f"cannot_link involves invalid tracks: {ids(tid[src[bad]])}")
    hn = v.col(S.HARD_NEGATIVE)
    has_hn = hn.is_valid().to_numpy(zero_copy_only=False)
    if has_hn.any():
        in_cl = np.zeros(n, bool)
        in_cl[src[tid[dst] == hn.fill_null(-1).to_numpy()[src]]] = True
        if (bad := has_hn & ~in_cl).any():
            out.append(f"hard_negative not in cannot_link in {ids(tid, bad)}")
    return out


def co_occurrence_rule(v: ShardView) -> list[str]:
    """Cannot-links are exactly the pairs of valid tracks that share a frame: no linked pair
    without a shared frame, no valid pair sharing a frame without a link."""
    _, src, dst = _links(v)
    tid, frames, starts = v.tid, v.frames, v.starts

    def shares(a: int, b: int) -> bool:
        return bool(np.intersect1d(frames[starts[a]:starts[a + 1]], frames[starts[b]:starts[b + 1]],
                                   assume_unique=True).size)
    linked = {(int(min(a, b)), int(max(a, b))) for a, b in zip(src, dst) if a != b}
    out = []
    if no_share := sorted(p for p in linked if not shares(*p)):
        out.append(f"cannot_link pairs sharing no frame: {len(no_share)} pair(s), e.g. "
                   f"{[(int(tid[a]), int(tid[b])) for a, b in no_share[:SHOWN]]}")
    missing, rows_valid = [], np.flatnonzero(v.valid)
    for s in np.unique(v.shot_id[rows_valid]):     # valid pairs of one shot whose spans overlap
        r = rows_valid[v.shot_id[rows_valid] == s]
        first, last = v.first[r], v.last[r]
        overlap = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
        for i, j in zip(*np.nonzero(np.triu(overlap, 1))):
            pair = (int(r[i]), int(r[j]))
            if pair not in linked and shares(*pair):
                missing.append(pair)
    if missing:
        out.append(f"valid tracks sharing a frame but not cannot-linked: {len(missing)} pair(s), "
                   f"e.g. {[(int(tid[a]), int(tid[b])) for a, b in missing[:SHOWN]]}")
    return out


#: the rules that run once the guards pass, in order
RULES = (frame_rule, box_rule, interpolation_rule, finite_rule, unit_norm_rule,
         tracklet_member_rule, mean_rule, crop_rule, min_length_rule, cannot_link_rule,
         co_occurrence_rule)
