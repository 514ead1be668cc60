"""The track life cycle of one title, as its faces arrive in frame order.

open      ``OpenFaces``: an open track's faces, columnar, crops spooled to local disk
closed    ``close_track``: its row (hard-positive tracklets, mean, quality, the crops it keeps:
          ``crop_positions``) goes to the spill file; only its ``_Summaries`` entry stays in memory
title end ``TitleTracker.finish``: validity (short, low quality), cannot-links between valid
          co-occurring tracks, hard negatives -> ``HarvestedTracks`` (the spill plus the
          title columns), which writes the shard

``FaceBatch`` is what the title's pipeline hands it (the embed stage's output).
``harvest.title.tracking.TrackLinker`` decides which track a face joins (IoU within a shot); this
module decides what a track is. Memory stays flat in the title's length: the open tracks'
faces, one spill batch and (T, D) track summaries.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from harvest.config import HarvestConfig
from harvest.dataset.schema import N_TRACKLETS
from harvest.dataset.shard import SpillWriter, TitleColumns, TrackRow, write_shard_file
from harvest.miners import mine_tracklets, nearest_cannot_linked, valid_links
from harvest.vectors import l2_normalize
from harvest.title.quality import face_quality, face_size, mad_outliers, track_quality
from harvest.title.tracking import Track, TrackLinker, interpolate_boxes


@dataclass(frozen=True)
class FaceBatch:
    """Faces with features, columnar, in frame order. F faces: frame_idx (F,), shot (F,),
    pts (F,) s, boxes (F, 4), kps (F, 5, 2), scores (F,), blur (F,), emb (F, D), and jpeg:
    F JPEG-encoded aligned crops, or None when no crops are stored."""
    frame_idx: np.ndarray
    shot: np.ndarray
    pts: np.ndarray
    boxes: np.ndarray
    kps: np.ndarray
    scores: np.ndarray
    blur: np.ndarray
    emb: np.ndarray
    jpeg: list | None = None


@dataclass
class HarvestedTracks:
    """A title's tracks after the stream: rows in the spill file, title columns and counts here.
    Owns a scratch directory; use as a context manager (or ``close()``) to remove it."""
    spill: SpillWriter
    title: TitleColumns
    shot_id: np.ndarray        # (T,)
    n_faces: np.ndarray        # (T,)
    quality: np.ndarray        # (T,)
    scratch: tempfile.TemporaryDirectory = field(repr=False)
    crop_bytes: np.ndarray | None = None   # (T,) JPEG bytes stored per track

    def __len__(self) -> int:
        return len(self.n_faces)

    @property
    def faces(self) -> int:
        return int(self.n_faces.sum())

    @property
    def valid_tracks(self) -> int:
        return int(self.title.is_valid.sum())

    @property
    def cannot_link_pairs(self) -> int:
        return sum(len(c) for c in self.title.cannot_link) // 2

    def write_shard(self, title_id: str, meta: dict) -> str:
        """Write the final shard to a local file in the scratch directory; return its path."""
        path = os.path.join(self.scratch.name, "shard.parquet")
        write_shard_file(self.spill, self.title, title_id, meta, path, self.n_faces,
                         crop_bytes=self.crop_bytes)
        return path

    def close(self) -> None:
        self.scratch.cleanup()

    def __enter__(self) -> "HarvestedTracks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _grown(col: np.ndarray, rows: int) -> np.ndarray:
    """``col``'s rows at the start of a new array of ``rows`` rows (the growth step of the
    columns that double when full)."""
    out = np.empty((rows, *col.shape[1:]), col.dtype)
    out[:len(col)] = col
    return out


class _Summaries:
    """What the end of the title needs of each closed track, indexed by track_id: the mean
    embedding and anchor tracklet (2 x D float32), shot, faces, quality, span and crop bytes in
    contiguous arrays that double when full, and the set of tracks it shares a frame with.
    Contiguous, not a small object and two (D,) arrays per track: those cost ~8 KB a track
    (the anchor, a row of the (3, D) tracklet array, kept all three alive) plus as much again
    in heap fragmentation, interleaved with the closed tracks' freed faces (measured: 1,534
    tracks of a synthetic title, D=512, 30 MB of RSS; contiguous, 4 KB a track)."""

    _NUMBERS = (("shot", np.int32), ("n_faces", np.int64), ("quality", np.float32),
                ("span", np.float64), ("crop_bytes", np.int64))

    def __init__(self, dim: int):
        self.vectors = np.zeros((0, 2, dim), np.float32)      # [t, 0] mean, [t, 1] anchor
        self.numbers = {name: np.zeros(0, dtype) for name, dtype in self._NUMBERS}
        self.partners: dict[int, set] = {}

    def __len__(self) -> int:
        return len(self.partners)

    def add(self, t: int, mean: np.ndarray, anchor: np.ndarray, partners: set, **numbers) -> None:
        if t >= len(self.vectors):
            size = max(64, 2 * len(self.vectors), t + 1)
            self.vectors = _grown(self.vectors, size)
            self.numbers = {name: _grown(col, size) for name, col in self.numbers.items()}
        self.vectors[t, 0], self.vectors[t, 1] = mean, anchor
        for name, value in numbers.items():
            self.numbers[name][t] = value
        self.partners[t] = partners

    def columns(self) -> tuple[np.ndarray, dict, list]:
        """-> (T, 2, D) vectors, the numbers (T,) each and the partner sets, in track_id order;
        track ids must be 0..T-1."""
        T = len(self.partners)
        if set(self.partners) != set(range(T)):
            raise ValueError("closed track ids are not 0..T-1")
        return (self.vectors[:T], {k: v[:T] for k, v in self.numbers.items()},
                [self.partners[t] for t in range(T)])


def crop_positions(n_faces: int, mode: str, per_track: int, seeds=()) -> np.ndarray:
    """Positions of the faces whose crops a track of ``n_faces`` keeps, ascending: none; all;
    or sample = ``per_track`` positions spread evenly (first and last included) plus ``seeds``."""
    if mode == "none":
        return np.zeros(0, np.int32)
    if mode == "all" or n_faces <= per_track:
        return np.arange(n_faces, dtype=np.int32)
    even = np.floor(np.linspace(0, n_faces - 1, per_track) + 0.5).astype(np.int64)
    return np.union1d(even, np.asarray(seeds, np.int64)).astype(np.int32)


class OpenFaces:
    """The faces of one open track, columnar: numpy columns that grow by doubling (about
    4*D + 100 bytes a face, against ~1 KB of Python objects per face held as tuples), and the
    faces' JPEG crops appended to a spool file on local disk (``spool``), because which crops a
    track keeps is known only when it closes (an even spread over its final length plus its
    tracklet seeds). A single shot of one face that lasts an hour therefore holds its embeddings
    in memory (the k-NN tracklet mining needs them all, O(N*D)) and nothing else per face.
    ``append((faces, i))`` takes face ``i`` of a ``FaceBatch``."""

    _COLUMNS = (("frame_idx", np.int64, ()), ("pts", np.float64, ()), ("boxes", np.float32, (4,)),
                ("kps", np.float32, (10,)), ("scores", np.float32, ()), ("blur", np.float32, ()))

    def __init__(self, dim: int, spool: str | None = None):
        self.n, self.dim, self.spool = 0, dim, spool
        self.cols = {name: np.empty((1, *shape), dtype) for name, dtype, shape in self._COLUMNS}
        self._crop_ends: np.ndarray | None = None          # (n,) end offset of each JPEG
        self._file = None

    def append(self, payload: tuple) -> None:
        faces, i = payload
        if "emb" not in self.cols:                # the backend's dtype (dlib's is float64)
            self.cols["emb"] = np.empty((1, self.dim), faces.emb.dtype)
        if self.n == len(self.cols["emb"]):
            self.cols = {name: _grown(col, 2 * len(col)) for name, col in self.cols.items()}
            if self._crop_ends is not None:
                self._crop_ends = _grown(self._crop_ends, 2 * len(self._crop_ends))
        c, n = self.cols, self.n
        c["frame_idx"][n], c["pts"][n], c["boxes"][n] = faces.frame_idx[i], faces.pts[i], faces.boxes[i]
        c["kps"][n], c["scores"][n], c["blur"][n] = faces.kps[i].reshape(10), faces.scores[i], faces.blur[i]
        c["emb"][n] = faces.emb[i]
        if faces.jpeg is not None:
            if self._file is None:
                self._file = open(self.spool, "wb")
                self._crop_ends = np.empty(len(c["emb"]), np.int64)
            self._file.write(faces.jpeg[i])
            self._crop_ends[n] = self._file.tell()
        self.n += 1

    def __len__(self) -> int:
        return self.n

    def column(self, name: str) -> np.ndarray:
        """The first n rows of a column (a view)."""
        return self.cols[name][:self.n]

    @property
    def has_crops(self) -> bool:
        return self._crop_ends is not None

    def crops(self, positions: np.ndarray) -> list[bytes]:
        """The JPEG bytes of the faces at ``positions`` (ascending), read back from the spool."""
        if self._file is None:
            return []
        self._file.flush()
        ends = self._crop_ends[:self.n]
        out = []
        with open(self.spool, "rb") as f:
            for p in positions:
                start = int(ends[p - 1]) if p else 0
                f.seek(start)
                out.append(f.read(int(ends[p]) - start))
        return out

    def discard(self) -> None:
        """Remove the spool file (the track closed, or the title failed)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            os.remove(self.spool)


def close_track(track: Track, crops: str = "none", crops_per_track: int = 0) -> TrackRow:
    """A closed track (faces: ``OpenFaces``) -> its row, with the hard-positive tracklets, mean
    embedding, quality and the crops that ``crops`` keeps; the track's crop spool is removed."""
    f: OpenFaces = track.faces
    try:
        boxes, emb = f.column("boxes").copy(), f.column("emb").copy()
        blur, scores = f.column("blur").copy(), f.column("scores").copy()
        size = face_size(boxes)
        tracklets = mine_tracklets(emb, N_TRACKLETS)
        pos = (crop_positions(len(emb), crops, crops_per_track, tracklets.seeds)
               if f.has_crops else np.zeros(0, np.int32))
        frames = f.column("frame_idx").copy()
        return TrackRow(
            track.track_id, track.shot, frames, f.column("pts").copy(), boxes,
            f.column("kps").copy(), scores, size, blur, emb,
            l2_normalize(emb.mean(axis=0)[None])[0], tracklets,
            track_quality(face_quality(scores, size, blur)), f.crops(pos), pos,
            *interpolate_boxes(frames, boxes))
    finally:
        f.discard()


class TitleTracker:
    """Consumes a title's face batches in frame order; closed tracks go to the spill file."""

    def __init__(self, config: HarvestConfig, fps: float, dim: int, scratch_dir: str | None = None):
        self.config, self.fps, self.dim = config, fps, dim
        max_gap = max(config.det_stride, int(round(config.max_gap_seconds * fps)))
        self.scratch = tempfile.TemporaryDirectory(prefix="harvest-title-", dir=scratch_dir)
        self.linker = TrackLinker(config.iou_threshold, max_gap, new_faces=lambda track_id: OpenFaces(
            dim, os.path.join(self.scratch.name, f"crops-{track_id}.jpg-spool")))
        self.spill = SpillWriter(os.path.join(self.scratch.name, "spill.parquet"), dim)
        self.summaries = _Summaries(dim)

    def add(self, faces: FaceBatch) -> None:
        """One batch, frame order, later frames than the previous batch; a frame's faces are
        never split across batches (the embed stage flushes whole frames)."""
        f = faces.frame_idx
        starts = np.flatnonzero(np.r_[True, np.diff(f) != 0]) if len(f) else []
        for s, e in zip(starts, list(starts[1:]) + [len(f)]):
            payloads = [(faces, i) for i in range(s, e)]
            for track in self.linker.push(int(f[s]), int(faces.shot[s]), faces.boxes[s:e],
                                          payloads):
                self._close(track)

    def _close(self, track: Track) -> None:
        row = close_track(track, self.config.crops, self.config.crops_per_track)
        tl = row.tracklets
        self.summaries.add(
            track.track_id, row.mean_embedding,
            tl.vectors[0] if tl.vectors is not None else row.mean_embedding, track.partners,
            shot=row.shot_id, n_faces=len(row.frame_idx), quality=row.track_quality,
            span=float(row.frame_idx[-1] - row.frame_idx[0] + self.config.det_stride),
            crop_bytes=row.crop_bytes)
        self.spill.add(row)

    def finish(self) -> HarvestedTracks:
        """End of the title: close every track, then validity, cannot-link, hard negatives."""
        for track in self.linker.finish():
            self._close(track)
        self.spill.close()
        cfg = self.config
        vectors, n, partners = self.summaries.columns()
        quality = n["quality"]
        reasons: list = [None] * len(partners)
        long_enough = n["span"] / self.fps >= cfg.min_track_seconds
        for t in np.flatnonzero(~long_enough):
            reasons[t] = "short"
        candidates = np.flatnonzero(long_enough)
        for t in candidates[mad_outliers(quality[candidates], cfg.quality_mad_k)]:
            reasons[t] = "low_quality"
        valid = np.array([r is None for r in reasons], bool)
        links = valid_links(partners, valid)
        hard_neg = nearest_cannot_linked(vectors[:, 0], vectors[:, 1], links)
        self.summaries = _Summaries(self.dim)
        return HarvestedTracks(self.spill, TitleColumns(valid, reasons, links, hard_neg),
                               n["shot"], n["n_faces"], quality, self.scratch, n["crop_bytes"])

    def close(self) -> None:
        """Drop everything (after a failure)."""
        for track in self.linker.finish():
            track.faces.discard()
        self.spill.close()
        self.scratch.cleanup()
