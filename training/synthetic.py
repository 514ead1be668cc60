"""Schema-valid synthetic shards for tests and benchmarks.

Each title has ``n_identities`` identity centres on the unit sphere. Shots hold 1..``max_concurrent``
tracks of distinct identities spanning the whole shot, so concurrent tracks are cannot-link.
A face embedding is normalise(centre + track offset + face noise): the track offset (pose,
lighting of that shot) is the nuisance an adaptation head can learn to remove. Tracklets are
the three thirds of a track's faces; the hard negative is the cannot-link track whose mean is
nearest to the anchor tracklet (methods.md 0). Boxes sit at one horizontal slot per concurrent
track, so box-level labels can be matched by IoU.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harvest.config import PIPELINE_VERSION
from harvest.dataset.schema import (N_TRACKLETS, parquet_options, shard_schema, vector_type,
                                    with_metadata)
from harvest.vectors import l2_normalize

BOX_W, BOX_H, SLOT_STEP = 80.0, 80.0, 150.0
FPS = 24.0


@dataclass(frozen=True)
class SyntheticSpec:
    dim: int = 32
    n_identities: int = 6
    tracks_per_title: int = 60
    faces_per_track: tuple[int, int] = (3, 9)   # inclusive range; < 3 faces -> no tracklets
    max_concurrent: int = 3
    shot_frames: int = 48
    track_offset: float = 0.6                   # nuisance scale relative to unit centres
    face_noise: float = 0.25
    invalid_fraction: float = 0.05


def _unit(x: np.ndarray) -> np.ndarray:
    return l2_normalize(x, dtype=None)


def _fsl(values: np.ndarray, size: int) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()),
                                             type=vector_type(size))


def _lists(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def make_title(title_id: str, spec: SyntheticSpec, seed: int,
               labels: bool = True) -> tuple[pa.Table, list, list]:
    """-> (shard table with metadata, track label rows, box label rows (empty without
    ``labels``))."""
    rng = np.random.default_rng(seed)
    t = SimpleNamespace(d=spec.dim)
    t.centres = _unit(rng.standard_normal((spec.n_identities, spec.dim)))
    t.ident, t.shot, t.slot, t.start = _shots(rng, spec)
    t.n = len(t.ident)
    _faces(rng, spec, t)
    _tracklets(t)
    t.track_ids = np.arange(t.n, dtype=np.int64) + 1000 * (seed % 7)
    _constraints(rng, spec, t)
    t.boxes = np.zeros((len(t.face_track), 4), np.float32)
    x0 = 20 + SLOT_STEP * t.slot[t.face_track] + rng.uniform(-3, 3, len(t.face_track))
    y0 = 60 + rng.uniform(-3, 3, len(t.face_track))
    t.boxes[:] = np.stack([x0, y0, x0 + BOX_W, y0 + BOX_H], axis=1)
    schema = shard_schema(t.d)
    meta = dict(title_id=title_id, source_uri=f"synthetic://{title_id}.mp4", fps=FPS, width=1280,
                height=720, frame_count=int(t.start.max() + spec.shot_frames),
                backend="synthetic", detector_file="", detector_sha256="", embedder_file="",
                embedder_sha256="", embedding_dim=t.d, pipeline_version=PIPELINE_VERSION,
                config_hash="synthetic", shot_boundaries=sorted(set(t.start.tolist())))
    columns = _columns(title_id, t)
    table = pa.Table.from_pydict({f.name: columns[f.name] for f in schema},
                                 schema=with_metadata(schema, meta))
    if not labels:
        return table, [], []
    names = [f"id{seed}_{i}" for i in range(spec.n_identities)]
    track_rows = [(title_id, int(t.track_ids[k]), names[t.ident[k]]) for k in range(t.n)]
    box_rows = [(f"{title_id}.mp4", int(t.frames[f]), *map(float, t.boxes[f]),
                 names[t.ident[t.face_track[f]]]) for f in range(len(t.face_track))]
    return table, track_rows, box_rows


def _shots(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, ...]:
    """Tracks shot by shot, each shot 1..max_concurrent distinct identities side by side ->
    (identity, shot, slot, first frame) per track."""
    ident, shot, slot, start = [], [], [], []
    s = 0
    while len(ident) < spec.tracks_per_title:
        k = min(int(rng.integers(1, spec.max_concurrent + 1)), spec.tracks_per_title - len(ident),
                spec.n_identities)
        ident += list(rng.choice(spec.n_identities, size=k, replace=False))
        shot += [s] * k
        slot += list(range(k))
        start += [s * spec.shot_frames] * k
        s += 1
    return tuple(map(np.asarray, (ident, shot, slot, start)))


def _faces(rng: np.random.Generator, spec: SyntheticSpec, t: SimpleNamespace) -> None:
    """Each track's faces spread over its shot; an embedding is its identity's centre plus
    the track's offset plus face noise; the track's unit mean."""
    d, n = t.d, t.n
    t.n_faces = rng.integers(spec.faces_per_track[0], spec.faces_per_track[1] + 1, size=n)
    t.face_track = np.repeat(np.arange(n), t.n_faces)
    t.face_off = np.concatenate([[0], np.cumsum(t.n_faces)])
    pos = np.arange(len(t.face_track)) - t.face_off[t.face_track]
    t.frames = t.start[t.face_track] + (pos * (spec.shot_frames - 1)) // np.maximum(
        t.n_faces[t.face_track] - 1, 1)
    offsets = spec.track_offset * rng.standard_normal((n, d)) / np.sqrt(d) * np.sqrt(d / 4)
    emb = _unit(t.centres[t.ident[t.face_track]] + offsets[t.face_track]
                + spec.face_noise * rng.standard_normal((len(t.face_track), d)) / np.sqrt(d) * 2)
    t.emb = emb.astype(np.float32)
    t.mean = _unit(np.add.reduceat(t.emb, t.face_off[:-1], axis=0)).astype(np.float32)


def _tracklets(t: SimpleNamespace) -> None:
    """Tracklets: the unit means of each track's thirds (tracks of >= N_TRACKLETS faces)."""
    t.has_tl = t.n_faces >= N_TRACKLETS
    t.tracklets = np.zeros((t.n, N_TRACKLETS, t.d), np.float32)
    t.members = []
    for k in range(t.n):
        parts = np.array_split(np.arange(t.n_faces[k]), N_TRACKLETS)
        t.members.append([p.tolist() for p in parts] if t.has_tl[k] else [[] for _ in parts])
        if t.has_tl[k]:
            t.tracklets[k] = _unit(np.stack([t.emb[t.face_off[k] + p].mean(0) for p in parts]))


def _constraints(rng: np.random.Generator, spec: SyntheticSpec, t: SimpleNamespace) -> None:
    """Validity; cannot-links between the valid tracks of a shot; the hard negative nearest to
    the anchor tracklet."""
    n = t.n
    t.valid = rng.random(n) >= spec.invalid_fraction
    t.cannot, t.hard = [], []
    for k in range(n):
        others = np.flatnonzero((t.shot == t.shot[k]) & (np.arange(n) != k) & t.valid
                                & t.valid[k])
        t.cannot.append(t.track_ids[others].tolist())
        if len(others) and t.has_tl[k]:
            dist = np.linalg.norm(t.mean[others] - t.tracklets[k, 0], axis=1)
            t.hard.append(int(t.track_ids[others[np.argmin(dist)]]))
        else:
            t.hard.append(None)


def _columns(title_id: str, t: SimpleNamespace) -> dict:
    """The shard's columns (Arrow arrays) of the generated title ``t``."""
    n, d, nf = t.n, t.d, len(t.face_track)
    face_lists = lambda values: _lists(t.face_off, values)      # noqa: E731
    return {
        "title_id": pa.array([title_id] * n, pa.string()),
        "track_id": pa.array(t.track_ids, pa.int64()),
        "shot_id": pa.array(t.shot, pa.int32()),
        "n_faces": pa.array(t.n_faces, pa.int32()),
        "frame_idx": face_lists(pa.array(t.frames, pa.int32())),
        "timestamps": face_lists(pa.array(t.frames / FPS, pa.float64())),
        "boxes": face_lists(_fsl(t.boxes, 4)),
        **_interpolated(t.frames, t.boxes, t.face_off),
        "landmarks": face_lists(_fsl(np.zeros((nf, 10), np.float32), 10)),
        "det_score": face_lists(pa.array(np.full(nf, 0.9, np.float32))),
        "face_size": face_lists(pa.array(np.full(nf, BOX_W, np.float32))),
        "blur": face_lists(pa.array(np.full(nf, 100.0, np.float32))),
        "embeddings": face_lists(_fsl(t.emb, d)),
        "mean_embedding": _fsl(t.mean, d),
        "tracklets": pa.FixedSizeListArray.from_arrays(
            _fsl(t.tracklets.reshape(-1, d), d), N_TRACKLETS, mask=pa.array(~t.has_tl)),
        "tracklet_members": pa.array(t.members, pa.list_(pa.list_(pa.int32()))),
        "crops": pa.array([[]] * n, pa.list_(pa.binary())),          # synthetic: no images
        "crop_positions": pa.array([[]] * n, pa.list_(pa.int32())),
        "cannot_link": pa.array(t.cannot, pa.list_(pa.int64())),
        "hard_negative": pa.array(t.hard, pa.int64()),
        "track_quality": pa.array(np.ones(n, np.float32)),
        "is_valid": pa.array(t.valid),
        "invalid_reason": pa.array([None if v else "short" for v in t.valid], pa.string()),
    }


def _interpolated(frames: np.ndarray, boxes: np.ndarray, face_off: np.ndarray) -> dict:
    """The ``interp_frame_idx`` / ``interp_boxes`` columns of tracks whose faces are
    ``frames[face_off[t]:face_off[t + 1]]`` (the harvest's own interpolation)."""
    from harvest.title.tracking import interpolate_boxes
    parts = [interpolate_boxes(frames[a:b], boxes[a:b]) for a, b in zip(face_off[:-1], face_off[1:])]
    offsets = pa.array(np.r_[0, np.cumsum([len(f) for f, _ in parts])].astype(np.int32))
    flat_f = np.concatenate([f for f, _ in parts]) if parts else np.zeros(0, np.int64)
    flat_b = np.concatenate([b for _, b in parts]) if parts else np.zeros((0, 4), np.float32)
    return {"interp_frame_idx": pa.ListArray.from_arrays(offsets, pa.array(flat_f, pa.int32())),
            "interp_boxes": pa.ListArray.from_arrays(offsets, _fsl(flat_b.reshape(-1, 4), 4))}


def write_dataset(out_dir: str, n_titles: int, spec: SyntheticSpec = SyntheticSpec(),
                  seed: int = 0, labels: bool = True) -> dict[str, str]:
    """Write ``<out_dir>/shards/<title>.parquet`` and two label CSVs (track and box level), one
    title at a time (memory: one title, whatever ``n_titles``); ``labels=False`` writes no CSV
    rows (large benchmark sets).

    Box-level labels use the source basename as ``title`` to exercise that match.
    Returns paths: ``shards``, ``track_labels``, ``box_labels``.
    """
    shards = os.path.join(out_dir, "shards")
    os.makedirs(shards, exist_ok=True)
    paths = dict(shards=shards, track_labels=os.path.join(out_dir, "track_labels.csv"),
                 box_labels=os.path.join(out_dir, "box_labels.csv"))
    with open(paths["track_labels"], "w", newline="") as ft, \
            open(paths["box_labels"], "w", newline="") as fb:
        wt, wb = csv.writer(ft), csv.writer(fb)
        wt.writerow(["title", "track_id", "identity"])
        wb.writerow(["title", "frame", "x1", "y1", "x2", "y2", "identity"])
        for i in range(n_titles):
            title = f"title{i:03d}"
            table, tracks, boxes = make_title(title, spec, seed * 1000 + i, labels)
            pq.write_table(table, os.path.join(shards, f"{title}.parquet"),
                           **parquet_options(table.schema))
            wt.writerows(tracks)
            wb.writerows(boxes)
            del table
    return paths
