"""The per-title work as a plain function: decode -> shots -> faces -> tracks -> quality -> mining.

``harvest_title`` needs no Ray; the runner calls it inside a worker that loaded the backend once.
Each stage hands the next its own small type (frames, per-frame detections, face batches). The
title is a stream: faces are linked into tracks as they arrive (``harvest.tracking.TrackLinker``);
a track that closes gets its tracklets, mean and quality at once and its row goes to a local
spill file (``harvest.shard.SpillWriter``), leaving only a small summary in memory. At the end,
validity, cannot-link and hard negatives are decided from the summaries, and
``harvest.shard.write_shard_file`` writes the shard from the spill. Memory stays flat in the
title's length: the open tracks' faces, one spill batch, and (T, D) track means; and bounded in
its resolution: a detector batch holds at most ``MAX_HELD_FRAME_BYTES`` of full frames (kept for
alignment) and hands the detector only det-size images (``FaceBackend.prepare``). Face crops
(``HarvestConfig.crops``) are JPEG-encoded in the detect stage, right after alignment; an open
track holds its faces' JPEG bytes and keeps the ones its crops mode selects when it closes.
"""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from harvest.config import HarvestConfig, RunOptions
from harvest.decode import VideoInfo
from harvest.faces.base import Detections, FaceBackend
from harvest.miners import mine_tracklets, nearest_cannot_linked, valid_links
from harvest.miners.base import l2_normalize
from harvest.readers import read_title
from harvest.quality import blur_score, face_quality, face_size, mad_outliers, track_quality
from harvest.schema import N_TRACKLETS
from harvest.shard import SpillWriter, TitleColumns, TrackRow, encode_crops, write_shard_file
from harvest.shots import ShotDetector
from harvest.stages import StageTimes, run_chain
from harvest.tracking import Track, TrackLinker, interpolate_boxes


@dataclass(frozen=True)
class ShotChunk:
    """A decoded chunk with each frame's shot id and presentation time (s)."""
    start: int
    frames: np.ndarray         # (n, H, W, 3) uint8 RGB
    shot: np.ndarray           # (n,) int32
    pts: np.ndarray            # (n,) float64


@dataclass(frozen=True)
class DetectedFrame:
    """One frame's faces, already aligned: no reference to the decoded frame is kept (a view
    would pin its whole chunk while faces wait for an embedding batch)."""
    frame_idx: int
    shot: int
    pts: float
    dets: Detections
    crops: np.ndarray          # (n, S, S, 3) uint8 aligned faces
    jpeg: list | None = None   # n JPEG encodings of the crops (None: crops not stored)


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
class TitleTracks:
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

    def __enter__(self) -> "TitleTracks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class TitleResult:
    info: VideoInfo
    frames: int                # frames actually decoded
    shot_boundaries: list
    tracks: TitleTracks
    times: StageTimes
    seconds: float
    decoder: str = "pyav"      # the reader that decoded the title (``harvest.readers``)
    decoder_fallback: str = ""  # why a preferred reader was not used or did not finish, if one was
    #                             passed over, or what it left to a fallback (nvdec: frame times)


# -- stages ----------------------------------------------------------------------------------

def decode_stage(reader, shots: ShotDetector, fps: float, on_progress=None):
    def stage(_start: Iterator) -> Iterator:
        for _ in _start:
            for chunk in reader.chunks():
                shots.update(chunk.start, chunk.frames)
                idx = np.arange(chunk.start, chunk.stop)
                pts = chunk.pts if chunk.pts is not None else idx / fps
                if on_progress is not None:
                    on_progress(chunk.stop, reader.info.reported_frames)
                yield ShotChunk(chunk.start, chunk.frames, shots.shot_of(idx),
                                np.asarray(pts, np.float64))
    return stage


# Full-resolution frames a detector batch may hold (they wait there for alignment, which crops
# from the full frame): 64 frames at 1080p (6.2 MB each), 16 at 4K (25 MB). The detector itself
# sees only each frame's det-size image (``FaceBackend.prepare``, made as the frame is picked),
# so a batch never holds full frames converted to float.
MAX_HELD_FRAME_BYTES = 384 * 2**20


@dataclass(frozen=True)
class _Picked:
    frame_idx: int
    shot: int
    pts: float
    frame: object              # (H, W, 3) uint8, numpy or a tensor on the backend's device
    input: object              # backend.prepare(frame)


def detect_stage(backend: FaceBackend, stride: int, batch: int, min_face_size: float,
                 encode: bool = False, max_held_bytes: int | None = None):
    """Detect and align; with ``encode`` the aligned crops are JPEG-encoded here, while they are
    in memory (an open track then holds ~4 KB per face for its crops, not S*S*3 bytes).
    A detector call takes up to ``batch`` frames, filled across decode chunks (so a GPU batch is
    not cut to a 1080p chunk's 4 frames), and fewer where their full frames would pass
    ``max_held_bytes`` (default ``MAX_HELD_FRAME_BYTES``). With ``stride`` > 1 a picked frame is
    copied out of its chunk, so the batch does not keep whole chunks alive for one frame each."""
    cap = MAX_HELD_FRAME_BYTES if max_held_bytes is None else max_held_bytes

    def run(picked: list) -> Iterator:
        for p, dets in zip(picked, backend.detect([p.input for p in picked])):
            dets = dets.keep(face_size(dets.boxes) >= min_face_size)
            if len(dets):
                crops = backend.align(p.frame, dets)
                yield DetectedFrame(p.frame_idx, p.shot, p.pts, dets, crops,
                                    encode_crops(crops) if encode else None)

    def stage(chunks: Iterator) -> Iterator:
        picked, held = [], 0
        for chunk in chunks:
            whole = stride == 1 or len(chunk.frames) == 1      # every frame of the chunk is used
            for i in range(len(chunk.frames)):
                if (chunk.start + i) % stride:
                    continue
                frame = chunk.frames[i] if whole else _own(chunk.frames[i])
                picked.append(_Picked(chunk.start + i, int(chunk.shot[i]), float(chunk.pts[i]),
                                      frame, backend.prepare(frame)))
                held += frame.nbytes
                if len(picked) == batch or held + frame.nbytes > cap:
                    yield from run(picked)
                    picked, held = [], 0
        if picked:
            yield from run(picked)
    return stage


def _own(frame):
    """A copy of one frame of a chunk (numpy or torch), holding none of the chunk's memory."""
    return frame.copy() if isinstance(frame, np.ndarray) else frame.clone()


def embed_stage(backend: FaceBackend, batch: int):
    def flush(pending: list) -> FaceBatch:
        crops = np.concatenate([d.crops for d in pending])
        emb = backend.embed(crops)
        per_face = lambda value: np.concatenate(  # noqa: E731
            [np.full(len(d.dets), getattr(d, value)) for d in pending])
        return FaceBatch(
            per_face("frame_idx").astype(np.int64), per_face("shot").astype(np.int32),
            per_face("pts").astype(np.float64),
            np.concatenate([d.dets.boxes for d in pending]),
            np.concatenate([d.dets.kps for d in pending]),
            np.concatenate([d.dets.scores for d in pending]),
            blur_score(crops), emb,
            None if pending[0].jpeg is None else [j for d in pending for j in d.jpeg])

    def stage(detected: Iterator) -> Iterator:
        pending, n = [], 0
        for d in detected:
            pending.append(d)
            n += len(d.crops)
            if n >= batch:
                yield flush(pending)
                pending, n = [], 0
        if pending:
            yield flush(pending)
    return stage


# -- tracks as the faces arrive, mining when they close --------------------------------------

@dataclass(frozen=True)
class _Summary:
    """What the end of the title needs of a closed track."""
    shot: int
    n_faces: int
    quality: float
    span: float                # frames, last - first + det_stride
    mean: np.ndarray           # (D,) unit norm
    anchor: np.ndarray         # (D,) anchor tracklet, or the mean without tracklets
    partners: set              # track ids sharing a frame
    crop_bytes: int


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
            for name, col in self.cols.items():
                grown = np.empty((2 * len(col), *col.shape[1:]), col.dtype)
                grown[:self.n] = col[:self.n]
                self.cols[name] = grown
            if self._crop_ends is not None:
                self._crop_ends = np.concatenate([self._crop_ends, np.empty_like(self._crop_ends)])
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
        self.summaries: dict[int, _Summary] = {}

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
        self.summaries[track.track_id] = _Summary(
            row.shot_id, len(row.frame_idx), row.track_quality,
            float(row.frame_idx[-1] - row.frame_idx[0] + self.config.det_stride),
            row.mean_embedding, tl.vectors[0] if tl.vectors is not None else row.mean_embedding,
            track.partners, row.crop_bytes)
        self.spill.add(row)

    def finish(self) -> TitleTracks:
        """End of the title: close every track, then validity, cannot-link, hard negatives."""
        for track in self.linker.finish():
            self._close(track)
        self.spill.close()
        cfg = self.config
        s = [self.summaries[t] for t in range(len(self.summaries))]   # track_id order
        quality = np.array([x.quality for x in s], np.float32)
        span = np.array([x.span for x in s], np.float64)
        reasons: list = [None] * len(s)
        long_enough = span / self.fps >= cfg.min_track_seconds
        for t in np.flatnonzero(~long_enough):
            reasons[t] = "short"
        candidates = np.flatnonzero(long_enough)
        for t in candidates[mad_outliers(quality[candidates], cfg.quality_mad_k)]:
            reasons[t] = "low_quality"
        valid = np.array([r is None for r in reasons], bool)
        links = valid_links([x.partners for x in s], valid)
        stack = lambda name: (np.stack([getattr(x, name) for x in s]) if s  # noqa: E731
                              else np.zeros((0, self.dim), np.float32))
        hard_neg = nearest_cannot_linked(stack("mean"), stack("anchor"), links)
        self.summaries = {}
        return TitleTracks(self.spill, TitleColumns(valid, reasons, links, hard_neg),
                           np.array([x.shot for x in s], np.int32),
                           np.array([x.n_faces for x in s], np.int64), quality, self.scratch,
                           np.array([x.crop_bytes for x in s], np.int64))

    def close(self) -> None:
        """Drop everything (after a failure)."""
        for track in self.linker.finish():
            track.faces.discard()
        self.spill.close()
        self.scratch.cleanup()


def harvest_title(path: str, backend: FaceBackend, config: HarvestConfig,
                  options: RunOptions | None = None, on_progress=None) -> TitleResult:
    """Harvest one local video file. Raises harvest.decode.DecodeError on unreadable input.
    ``on_progress(frames_decoded, frames_reported)`` is called after every decoded chunk.
    The result's ``tracks`` own a scratch directory (under ``options.scratch_dir``): close them.
    A GPU reader that cannot finish the title hands it to the CPU reader, which harvests it again
    from frame 0 (``harvest.readers.read_title``); the failed pass's tracks and scratch go."""
    options = options or RunOptions()
    t0 = time.perf_counter()
    det_batch = options.det_batch or backend.preferred_batches[0]
    embed_batch = options.embed_batch or backend.preferred_batches[1]

    def attempt(reader) -> TitleResult:
        times = StageTimes()
        shots = ShotDetector(config.shot_threshold, config.min_shot_frames)
        fps = reader.info.fps if reader.info.fps and reader.info.fps > 0 else 25.0
        tracker = TitleTracker(config, fps, backend.embedding_dim, options.scratch_dir)
        try:
            stages = [("decode", decode_stage(reader, shots, fps, on_progress)),
                      ("detect", detect_stage(backend, config.det_stride, det_batch,
                                              config.min_face_size, config.crops != "none")),
                      ("embed", embed_stage(backend, embed_batch))]
            for batch in run_chain([None], stages, threaded=options.pipelined, times=times):
                t1 = time.perf_counter()
                tracker.add(batch)
                times.add("track_mine", time.perf_counter() - t1)
            info, frames = reader.info, reader.frames_read
            t1 = time.perf_counter()
            tracks = tracker.finish()
            times.add("track_mine", time.perf_counter() - t1)
        except BaseException:
            tracker.close()
            raise
        return TitleResult(info, frames, list(shots.boundaries), tracks, times,
                           time.perf_counter() - t0, reader.name, reader.fallback)

    return read_title(path, attempt, decoder=options.decoder, device=backend.frame_device,
                      chunk_frames=options.chunk_frames)
