"""``harvest validate URL``: check every shard and the manifest against the contract.

``validate_table`` checks one shard (schema, metadata and the invariants of issue 2) and returns
human-readable violations; ``validate_output`` checks a whole output root (shards + manifest);
``validate_main`` prints the report and returns the exit code (0 valid, 1 violations).
"""
from __future__ import annotations

import json
import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harvest.dataset import schema as S
from harvest.dataset import storage
from harvest.miners.hard_positive import tracklet_seeds
from harvest.dataset.shard import decode_crop

UNIT_TOL = 1e-3
PER_FACE = ("frame_idx", "timestamps", "boxes", "landmarks", "det_score", "face_size", "blur", "embeddings")
SHOWN = 5  # track ids listed per violation


def _ids(track_ids: np.ndarray, mask: np.ndarray | None = None) -> str:
    ids = np.unique(track_ids if mask is None else track_ids[mask])
    more = f" (+{len(ids) - SHOWN} more)" if len(ids) > SHOWN else ""
    return f"{len(ids)} track(s): {', '.join(map(str, ids[:SHOWN].tolist()))}{more}"


def _col(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks()


def _flat(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Values and owning row of a list array, one level down (null rows contribute nothing)."""
    return (pc.list_flatten(arr).to_numpy(zero_copy_only=False),
            pc.list_parent_indices(arr).to_numpy(zero_copy_only=False))


def _vectors(arr: pa.Array, dim: int) -> np.ndarray:
    """(M, dim) float array of a fixed_size_list<float, dim> array without null slots."""
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def _interp_violations(table: pa.Table, tid: np.ndarray, frames: np.ndarray, row: np.ndarray,
                       n_faces: np.ndarray) -> list[str]:
    """``interp_frame_idx`` + ``frame_idx`` cover every frame of each track's span exactly once
    (interpolated frames strictly inside the span, none detected), with one finite box each."""
    interp = _col(table, "interp_frame_idx")
    lengths = pc.list_value_length(interp).to_numpy(zero_copy_only=False).astype(np.int64)
    box_len = pc.list_value_length(_col(table, "interp_boxes")).to_numpy(zero_copy_only=False)
    if (box_len != lengths).any():
        return [f"interp_boxes: length != interp_frame_idx in {_ids(tid, box_len != lengths)}"]
    first = np.full(len(tid), np.iinfo(np.int64).max)
    last = np.full(len(tid), -1, np.int64)
    np.minimum.at(first, row, frames)
    np.maximum.at(last, row, frames)
    out = []
    bad = n_faces + lengths != last - first + 1
    if bad.any():
        out.append(f"frame_idx + interp_frame_idx do not count every frame of the span in "
                   f"{_ids(tid, bad)}")
    i_frames, i_row = _flat(interp)
    i_frames, i_row = i_frames.astype(np.int64), i_row.astype(np.int64)
    keys = np.r_[row.astype(np.int64) * (1 << 32) + frames, i_row * (1 << 32) + i_frames]
    bad = (i_frames <= first[i_row]) | (i_frames >= last[i_row])
    if bad.any() or len(np.unique(keys)) != len(keys):
        out.append(f"interp_frame_idx outside the span or on a detected frame in "
                   f"{_ids(tid[i_row[bad]]) if bad.any() else 'some track(s)'}")
    same = i_row[1:] == i_row[:-1]
    if (same & (np.diff(i_frames) <= 0)).any():
        out.append(f"interp_frame_idx not strictly increasing in "
                   f"{_ids(tid[i_row[1:][same & (np.diff(i_frames) <= 0)]])}")
    return out + _box_violations(table, "interp_boxes", tid, i_row)


def _box_violations(table: pa.Table, name: str, tid: np.ndarray, row: np.ndarray) -> list[str]:
    """Boxes of the list column ``name`` (owning rows ``row``) finite with x1 < x2, y1 < y2."""
    boxes = _vectors(pc.list_flatten(_col(table, name)), 4)
    ok = np.isfinite(boxes).all(1) & (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
    return [] if ok.all() else [f"{name} not finite with x1<x2, y1<y2 in {_ids(tid[row[~ok]])}"]


def _schema_violations(table: pa.Table) -> tuple[list[str], int | None]:
    """Schema violations and D (None when the columns cannot be trusted for further checks)."""
    names = table.schema.names
    if "mean_embedding" not in names or not pa.types.is_fixed_size_list(
            table.schema.field("mean_embedding").type):
        return ["schema: no fixed-size 'mean_embedding' column, cannot tell D"], None
    dim = S.embedding_dim(table.schema)
    want = S.shard_schema(dim)
    out = [f"schema: missing column {n!r}" for n in want.names if n not in names]
    out += [f"schema: unexpected column {n!r}" for n in names if n not in want.names]
    for f in want:
        if f.name in names and table.schema.field(f.name).type != f.type:
            out.append(f"schema: column {f.name!r} is {table.schema.field(f.name).type}, "
                       f"expected {f.type}")
    broken = bool(out)
    if not out and names != want.names:
        out.append(f"schema: column order {names} != {want.names}")
    return out, (None if broken else dim)


def validate_table(table: pa.Table, meta: dict | None = None,
                   min_track_frames: int | None = None) -> list[str]:
    """Violations of the shard contract by ``table`` (empty list: valid).

    ``meta`` defaults to the table's file metadata. ``min_track_frames`` (span last-first+1 of a
    valid track) is checked when given; ``min_track_seconds``/``det_stride`` when in ``meta``.
    """
    out, dim = _schema_violations(table)
    if dim is None:
        return out  # the columns cannot be trusted enough to check the invariants
    if meta is None:
        try:
            meta = S.read_metadata(table.schema)
        except ValueError as e:
            out.append(f"metadata: {e}")
            meta = {}
    missing = [k for k in S.METADATA_FIELDS if k not in meta]
    if missing:
        out.append(f"metadata: missing fields {missing}")
    if "embedding_dim" in meta and meta["embedding_dim"] != dim:
        out.append(f"metadata: embedding_dim {meta['embedding_dim']} != D {dim} of the schema")
    nulls = [f"column {f.name!r}: {table.column(f.name).null_count} null value(s)"
             for f in table.schema if not f.nullable and table.column(f.name).null_count]
    nulls += [f"column {name!r}: null faces inside the lists" for name in PER_FACE
              if pc.list_flatten(_col(table, name)).null_count]
    out += nulls
    if table.num_rows == 0 or nulls:
        return out

    tid = _col(table, "track_id").to_numpy()
    titles = _col(table, "title_id").unique().to_pylist()
    if "title_id" in meta and titles != [meta["title_id"]]:
        out.append(f"title_id column {titles} != metadata title_id {meta['title_id']!r}")
    uniq, counts = np.unique(tid, return_counts=True)
    if (counts > 1).any():
        out.append(f"track_id not unique: {_ids(uniq[counts > 1])}")

    # Per-face lists all have n_faces entries.
    n_faces = _col(table, "n_faces").to_numpy().astype(np.int64)
    if (n_faces < 1).any():
        out.append(f"n_faces < 1 in {_ids(tid, n_faces < 1)}")
    for name in PER_FACE:
        lengths = pc.list_value_length(_col(table, name)).to_numpy(zero_copy_only=False)
        if (lengths != n_faces).any():
            out.append(f"{name}: length != n_faces in {_ids(tid, lengths != n_faces)}")
            return out  # positions below assume aligned lists

    # Frames: strictly increasing, inside [0, frame_count), one shot per track.
    frames, row = _flat(_col(table, "frame_idx"))
    frames = frames.astype(np.int64)
    same = row[1:] == row[:-1]
    bad = same & (np.diff(frames) <= 0)
    if bad.any():
        out.append(f"frame_idx not strictly increasing in {_ids(tid[row[1:][bad]])}")
    stamps = pc.list_flatten(_col(table, "timestamps")).to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(stamps)
    if bad.any():
        out.append(f"timestamps: non-finite values in {_ids(tid[row[bad]])}")
    bad = same & (np.diff(stamps) < 0)
    if bad.any():
        out.append(f"timestamps decreasing in {_ids(tid[row[1:][bad]])}")
    frame_count = meta.get("frame_count")
    if frame_count is not None:
        bad = (frames < 0) | (frames >= frame_count)
        if bad.any():
            out.append(f"frame_idx outside [0, {frame_count}) in {_ids(tid[row[bad]])}")
    shot_id = _col(table, "shot_id").to_numpy().astype(np.int64)
    bounds = meta.get("shot_boundaries")
    if bounds is not None:
        b = np.asarray(bounds, dtype=np.int64)
        if len(b) == 0 or b[0] != 0 or (np.diff(b) <= 0).any():
            out.append(f"metadata: shot_boundaries must be strictly increasing from 0, got "
                       f"{bounds[:10]}")
        else:
            frame_shot = np.searchsorted(b, frames, side="right") - 1
            bad = frame_shot != shot_id[row]
            if bad.any():
                out.append(f"track frames outside its shot_id (crosses a shot boundary or "
                           f"wrong shot) in {_ids(tid[row[bad]])}")

    # Geometry and finiteness.
    out += _box_violations(table, "boxes", tid, row)
    out += _interp_violations(table, tid, frames, row, n_faces)
    for name in ("landmarks", "det_score", "face_size", "blur"):
        values = pc.list_flatten(_col(table, name))
        values = _vectors(values, 10) if name == "landmarks" else values.to_numpy()[:, None]
        ok = np.isfinite(values).all(1)
        if not ok.all():
            out.append(f"{name}: non-finite values in {_ids(tid[row[~ok]])}")
    if not np.isfinite(_col(table, "track_quality").to_numpy()).all():
        out.append("track_quality: non-finite values")

    # Unit norms.
    def unit(vectors: np.ndarray) -> np.ndarray:
        return np.abs(np.linalg.norm(vectors, axis=-1) - 1.0) <= UNIT_TOL
    emb = _vectors(pc.list_flatten(_col(table, "embeddings")), dim)
    ok = unit(emb)
    if not ok.all():
        out.append(f"embeddings not unit-norm in {_ids(tid[row[~ok]])}")
    mean_emb = _vectors(_col(table, "mean_embedding"), dim)
    ok = unit(mean_emb)
    if not ok.all():
        out.append(f"mean_embedding not unit-norm in {_ids(tid, ~ok)}")
    tracklets = _col(table, "tracklets")
    has_tl = tracklets.is_valid().to_numpy(zero_copy_only=False)
    tl = np.zeros((0, S.N_TRACKLETS, dim), np.float32)
    if has_tl.any():
        tl = _vectors(tracklets.filter(pa.array(has_tl)).flatten(), dim)
        tl = tl.reshape(-1, S.N_TRACKLETS, dim)
        ok = unit(tl).all(1)
        if not ok.all():
            out.append(f"tracklets not unit-norm in {_ids(tid[has_tl][~ok])}")

    # Tracklet members: 3 disjoint non-empty lists of positions when tracklets exist.
    members = _col(table, "tracklet_members")
    n_lists = pc.list_value_length(members).to_numpy(zero_copy_only=False)
    inner = pc.list_flatten(members)
    inner_row = pc.list_parent_indices(members).to_numpy(zero_copy_only=False)
    inner_len = pc.list_value_length(inner).to_numpy(zero_copy_only=False)
    bad = (has_tl & (n_lists != S.N_TRACKLETS)) | (~has_tl & ~np.isin(n_lists, (0, S.N_TRACKLETS)))
    empty_rows = inner_row[inner_len == 0]
    bad |= has_tl & np.isin(np.arange(len(tid)), empty_rows)
    lists_bad = bad
    if bad.any():
        out.append(f"tracklet_members: not {S.N_TRACKLETS} lists (non-empty when tracklets are "
                   f"set) in {_ids(tid, bad)}")
    pos, pos_inner = _flat(inner)
    pos_row = inner_row[pos_inner].astype(np.int64)
    pos = pos.astype(np.int64)
    bad = (pos < 0) | (pos >= n_faces[pos_row])
    members_ok = not bad.any() and not lists_bad.any()
    if bad.any():
        out.append(f"tracklet_members: positions outside [0, n_faces) in {_ids(tid[pos_row[bad]])}")
    codes, counts = np.unique(pos_row * (int(n_faces.max()) + 1) + pos, return_counts=True)
    if (counts > 1).any():
        rows = codes[counts > 1] // (int(n_faces.max()) + 1)
        out.append(f"tracklet_members: lists not disjoint in {_ids(tid[rows])}")

    # Means: mean_embedding and tracklets are the normalised means of their faces.
    starts = np.r_[0, np.cumsum(n_faces)]  # lists are aligned with n_faces (checked above)
    has = n_faces > 0

    def same_direction(sums: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        sums = sums / np.maximum(np.linalg.norm(sums, axis=-1, keepdims=True), 1e-12)
        return (sums * vectors).sum(-1) >= 1.0 - UNIT_TOL
    if has.any():
        ok = same_direction(np.add.reduceat(emb, starts[:-1][has], axis=0), mean_emb[has])
        if not ok.all():
            out.append(f"mean_embedding is not the normalised mean of the track's embeddings "
                       f"in {_ids(tid[has][~ok])}")
    if members_ok and has_tl.any():
        take = has_tl[inner_row][pos_inner]  # faces of lists of tracks with tracklets (non-empty)
        seg = pos_inner[take]
        cuts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
        sums = np.add.reduceat(emb[(starts[pos_row] + pos)[take]], cuts, axis=0)
        sums = sums.reshape(-1, S.N_TRACKLETS, dim)
        ok = same_direction(sums, tl).all(1)
        if not ok.all():
            out.append(f"tracklets are not the normalised means of their tracklet_members in "
                       f"{_ids(tid[has_tl][~ok])}")

    out += _crop_violations(table, tid, n_faces, meta, emb, starts, has_tl, members_ok)

    # Minimum length of valid tracks.
    valid = _col(table, "is_valid").to_numpy(zero_copy_only=False)
    first, last = np.zeros(len(tid), np.int64), np.full(len(tid), -1, np.int64)
    first[has], last[has] = frames[starts[:-1][has]], frames[starts[1:][has] - 1]
    span = last - first + 1
    if min_track_frames is not None and (bad := valid & (span < min_track_frames)).any():
        out.append(f"valid track shorter than {min_track_frames} frames: {_ids(tid, bad)}")
    fps = meta.get("fps")
    if fps and meta.get("min_track_seconds") is not None and meta.get("det_stride") is not None:
        need = meta["min_track_seconds"] - meta["det_stride"] / fps
        bad = valid & (span / fps < need - 1e-9)
        if bad.any():
            out.append(f"valid track shorter than {meta['min_track_seconds']} s "
                       f"(stride tolerance {meta['det_stride']}): {_ids(tid, bad)}")

    out += _cannot_link_violations(table, tid, valid, shot_id, frames, starts, first, last)
    return out


def _crop_violations(table, tid, n_faces, meta, emb, starts, has_tl, members_ok) -> list[str]:
    """crops / crop_positions: as many crops as positions, positions strictly increasing in
    [0, n_faces), every crop a decodable S x S RGB JPEG; and what the metadata's crops mode
    promises (none: no crops; all: every face; sample: <= crops_per_track + 3 crops including
    each tracklet's seed face)."""
    out: list[str] = []
    crops, positions = _col(table, "crops"), _col(table, "crop_positions")
    n_crops = pc.list_value_length(crops).to_numpy(zero_copy_only=False)
    bad = n_crops != pc.list_value_length(positions).to_numpy(zero_copy_only=False)
    if bad.any():
        return [f"crops: len(crops) != len(crop_positions) in {_ids(tid, bad)}"]
    pos, row = _flat(positions)
    pos, row = pos.astype(np.int64), row.astype(np.int64)
    bad = (pos < 0) | (pos >= n_faces[row])
    if bad.any():
        out.append(f"crop_positions outside [0, n_faces) in {_ids(tid[row[bad]])}")
    bad = (row[1:] == row[:-1]) & (np.diff(pos) <= 0)
    if bad.any():
        out.append(f"crop_positions not strictly increasing in {_ids(tid[row[1:][bad]])}")
    size = meta.get("crop_size")
    data, drow = _flat(crops)
    bad = np.zeros(len(data), bool)
    for i, blob in enumerate(data):
        img = decode_crop(blob)
        bad[i] = img is None or img.shape[0] != img.shape[1] or (
            size is not None and img.shape[:2] != (size, size))
    if bad.any():
        out.append(f"crops: not a decodable {size or 'S'}x{size or 'S'} 3-channel JPEG in "
                   f"{_ids(tid[drow[bad]])}")
    mode = meta.get("crops")
    if mode == "none" and (n_crops > 0).any():
        out.append(f"crops mode none but crops stored in {_ids(tid, n_crops > 0)}")
    elif mode == "all" and (bad := n_crops != n_faces).any():
        out.append(f"crops mode all but not every face has a crop in {_ids(tid, bad)}")
    elif mode == "sample" and meta.get("crops_per_track") is not None:
        limit = int(meta["crops_per_track"]) + S.N_TRACKLETS
        if (bad := n_crops > limit).any():
            out.append(f"crops mode sample: more than {limit} crops in {_ids(tid, bad)}")
        if members_ok:      # seeds re-derived from the stored embeddings and members
            members, missing = _col(table, "tracklet_members"), []
            cstart = np.r_[0, np.cumsum(n_crops)]
            for r in np.flatnonzero(has_tl):
                seeds = tracklet_seeds(emb[starts[r]:starts[r + 1]], members[int(r)].as_py())
                if not set(seeds) <= set(pos[cstart[r]:cstart[r + 1]].tolist()):
                    missing.append(r)
            if missing:
                out.append(f"crops mode sample: a tracklet seed face has no crop in "
                           f"{_ids(tid[missing])}")
    return out


def _cannot_link_violations(table, tid, valid, shot_id, frames, starts, first, last) -> list[str]:
    """cannot_link: ids in the title, no self/duplicate links, symmetric, valid tracks only,
    exactly the valid pairs sharing a frame; hard_negative inside cannot_link."""
    out: list[str] = []
    n = len(tid)
    links, src = _flat(_col(table, "cannot_link"))
    links = links.astype(np.int64)
    order = np.argsort(tid, kind="stable")
    at = np.minimum(np.searchsorted(tid[order], links), n - 1)
    exists = tid[order][at] == links
    if (~exists).any():
        out.append(f"cannot_link to track ids not in the title from {_ids(tid[src[~exists]])}")
    if (links == tid[src]).any():
        out.append(f"cannot_link self-links in {_ids(tid[src[links == tid[src]]])}")
    src, dst = src[exists].astype(np.int64), order[at[exists]].astype(np.int64)
    code = src * n + dst
    uniq, counts = np.unique(code, return_counts=True)
    if (counts > 1).any():
        out.append(f"cannot_link duplicates in {_ids(tid[uniq[counts > 1] // n])}")
    sym = np.isin(dst * n + src, code)
    if (~sym).any():
        out.append(f"cannot_link not symmetric from {_ids(tid[src[~sym]])}")
    bad = ~(valid[src] & valid[dst])
    if bad.any():
        out.append(f"cannot_link involves invalid tracks: {_ids(tid[src[bad]])}")

    hn = _col(table, "hard_negative")
    has_hn = hn.is_valid().to_numpy(zero_copy_only=False)
    if has_hn.any():
        hn_val = hn.fill_null(-1).to_numpy()
        in_cl = np.zeros(n, bool)
        hit = (tid[dst] == hn_val[src])
        in_cl[src[hit]] = True
        bad = has_hn & ~in_cl
        if bad.any():
            out.append(f"hard_negative not in cannot_link in {_ids(tid, bad)}")

    def shares(a: int, b: int) -> bool:
        return bool(np.intersect1d(frames[starts[a]:starts[a + 1]], frames[starts[b]:starts[b + 1]],
                                   assume_unique=True).size)

    linked = {(int(min(a, b)), int(max(a, b))) for a, b in zip(src, dst) if a != b}
    no_share = sorted(p for p in linked if not shares(*p))
    if no_share:
        out.append(f"cannot_link pairs sharing no frame: {len(no_share)} pair(s), e.g. "
                   f"{[(int(tid[a]), int(tid[b])) for a, b in no_share[:SHOWN]]}")
    # Completeness: valid pairs of one shot whose frame ranges overlap and that share a frame.
    missing = []
    rows_valid = np.flatnonzero(valid)
    for s in np.unique(shot_id[rows_valid]):
        r = rows_valid[shot_id[rows_valid] == s]
        overlap = (first[r][:, None] <= last[r][None, :]) & (first[r][None, :] <= last[r][:, None])
        for i, j in zip(*np.nonzero(np.triu(overlap, 1))):
            pair = (int(r[i]), int(r[j]))
            if pair not in linked and shares(*pair):
                missing.append(pair)
    if missing:
        out.append(f"valid tracks sharing a frame but not cannot-linked: {len(missing)} pair(s), "
                   f"e.g. {[(int(tid[a]), int(tid[b])) for a, b in missing[:SHOWN]]}")
    return out


def _resolve(fs, root: str, path: str) -> str:
    """A record's shard_path as a path of ``fs``: a URL, an fs path, or relative to the root."""
    if "://" in path:
        return fs._strip_protocol(path)
    if path.startswith(root.rstrip("/") + "/"):
        return path
    joined = posixpath.join(root, path)
    return joined if fs.exists(joined) or not fs.exists(path) else path


def validate_output(url: str, min_track_frames: int | None = None) -> dict[str, Any]:
    """Check every shard and the manifest under an output root.

    Returns {"url", "shards": {title_id: [violations]}, "manifest": [violations],
    "warnings": [...], "n_shards", "n_records", "ok"}.
    """
    fs, root = storage.open_fs(url)
    report: dict[str, Any] = {"url": url, "shards": {}, "manifest": [], "warnings": []}
    problems, warnings = report["manifest"], report["warnings"]
    if not fs.exists(root):
        problems.append(f"output root {url} does not exist")
    records: dict[str, dict] = {}
    for path in storage.list_files(fs, posixpath.join(root, storage.RECORDS_DIR),
                                   storage.RECORD_SUFFIX):
        name = posixpath.basename(path)[: -len(storage.RECORD_SUFFIX)]
        try:
            rec = json.loads(fs.cat_file(path))
        except (ValueError, OSError) as e:
            problems.append(f"record {name}: unreadable ({e})")
            continue
        lacks = [k for k in S.MANIFEST_FIELDS if k not in rec]
        if lacks:
            problems.append(f"record {name}: missing fields {lacks}")
        if rec.get("title_id") != name:
            problems.append(f"record {name}: title_id {rec.get('title_id')!r} != file name")
        if rec.get("status") not in (S.STATUS_DONE, S.STATUS_FAILED):
            problems.append(f"record {name}: status {rec.get('status')!r}")
        records[name] = rec

    shards = storage.list_shards(fs, root)
    checked: set[str] = set()
    for title_id, rec in sorted(records.items()):
        if rec.get("status") != S.STATUS_DONE:
            continue
        spath = _resolve(fs, root, rec.get("shard_path") or storage.shard_path(root, title_id))
        if not fs.exists(spath):
            problems.append(f"record {title_id}: done but shard {spath} is missing")
            continue
        data = fs.cat_file(spath)
        if storage.sha256_bytes(data) != rec.get("shard_sha256"):
            problems.append(f"record {title_id}: shard sha256 mismatch ({spath})")
        checked.add(spath)
        report["shards"][title_id] = _validate_shard(data, title_id, rec, min_track_frames)
    for title_id, spath in sorted(shards.items()):
        if title_id not in records:
            problems.append(f"shard {title_id}: no manifest record")
        elif records[title_id].get("status") != S.STATUS_DONE:
            warnings.append(f"shard {title_id}: record status is "
                            f"{records[title_id].get('status')!r} (shard from an earlier run?)")
        if spath not in checked and title_id not in report["shards"]:
            report["shards"][title_id] = _validate_shard(fs.cat_file(spath), title_id, None,
                                                         min_track_frames)
    for d in (storage.SHARDS_DIR, storage.RECORDS_DIR):
        base = posixpath.join(root, d)
        if fs.exists(base):
            tmp = [p for p in fs.ls(base, detail=False) if ".tmp-" in posixpath.basename(p)]
            if tmp:
                warnings.append(f"{d}/: {len(tmp)} leftover temporary file(s)")
    _check_consolidated(fs, root, records, problems, warnings)

    report["n_shards"], report["n_records"] = len(shards), len(records)
    report["ok"] = not problems and not any(report["shards"].values())
    return report


def _validate_shard(data: bytes, title_id: str, rec: dict | None,
                    min_track_frames: int | None) -> list[str]:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as e:  # noqa: BLE001 - any parse failure is a violation
        return [f"not a readable Parquet file: {e}"]
    try:
        meta = S.read_metadata(table.schema)
    except ValueError as e:
        return [f"metadata: {e}"]
    out = validate_table(table, meta, min_track_frames)
    if meta.get("title_id") != title_id:
        out.append(f"metadata title_id {meta.get('title_id')!r} != shard name {title_id!r}")
    if rec is not None and table.num_rows and not out:
        counts = {"tracks": table.num_rows,
                  "valid_tracks": int(pc.sum(table.column("is_valid")).as_py() or 0),
                  "faces": int(pc.sum(table.column("n_faces")).as_py() or 0),
                  "cannot_link_pairs": int(pc.sum(pc.list_value_length(
                      table.column("cannot_link"))).as_py() or 0) // 2}
        for k, v in counts.items():
            if k in rec and rec[k] != v:
                out.append(f"manifest {k}={rec[k]} but the shard has {v}")
        for k in ("config_hash", "backend", "pipeline_version"):
            if rec.get(k) is not None and k in meta and rec[k] != meta[k]:
                out.append(f"manifest {k}={rec[k]!r} but the shard has {meta[k]!r}")
    return out


def _check_consolidated(fs, root, records, problems, warnings) -> None:
    path = storage.manifest_path(root)
    if not fs.exists(path):
        if records:
            warnings.append(f"{storage.MANIFEST_FILE} is missing")
        return
    try:
        lines = [json.loads(x) for x in fs.cat_file(path).decode().splitlines() if x.strip()]
    except ValueError as e:
        problems.append(f"{storage.MANIFEST_FILE}: unreadable ({e})")
        return
    ids = [r.get("title_id") for r in lines]
    if ids != sorted(set(ids), key=str):
        problems.append(f"{storage.MANIFEST_FILE}: title_ids not unique and sorted")
    if {r.get("title_id"): r for r in lines} != records:
        warnings.append(f"{storage.MANIFEST_FILE} differs from manifest/*.json (stale?)")


def validate_main(url: str, min_track_frames: int | None = None) -> int:
    """Print a validation report of the output at ``url``; 0 if valid, 1 on any violation."""
    report = validate_output(url, min_track_frames)
    print(f"harvest validate {url}: {report['n_shards']} shard(s), "
          f"{report['n_records']} manifest record(s)")
    for title_id, violations in sorted(report["shards"].items()):
        print(f"  {'FAIL' if violations else 'ok  '} {title_id}")
        for v in violations:
            print(f"       - {v}")
    for v in report["manifest"]:
        print(f"  FAIL manifest: {v}")
    for w in report["warnings"]:
        print(f"  warn {w}")
    n_bad = sum(bool(v) for v in report["shards"].values())
    print("VALID" if report["ok"] else f"INVALID: {n_bad} shard(s) with violations, "
          f"{len(report['manifest'])} manifest violation(s)")
    return 0 if report["ok"] else 1
