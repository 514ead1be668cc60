"""The per-title work as a plain function: decode -> shots -> faces -> tracks -> quality -> mining.

``harvest_title`` needs no Ray; the runner calls it inside a worker that loaded the backend once.
Each stage hands the next its own small type (frames, per-frame detections, face observations);
the shard table is built once at the end by ``harvest.shard``.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from harvest.config import HarvestConfig, RunOptions
from harvest.decode import ChunkedVideoReader, VideoInfo
from harvest.faces.base import Detections, FaceBackend
from harvest.miners import CannotLinkMiner, HardNegativeMiner, HardPositiveMiner, TrackSet, adjacency
from harvest.schema import N_TRACKLETS
from harvest.quality import blur_score, face_quality, face_size, mad_outliers, track_quality
from harvest.shots import ShotDetector
from harvest.stages import StageTimes, run_chain
from harvest.tracking import link_tracks


@dataclass(frozen=True)
class DetectedFrame:
    frame_idx: int
    frame: np.ndarray          # (H, W, 3) uint8 RGB
    dets: Detections


@dataclass(frozen=True)
class FaceBatch:
    """Faces with features, columnar. F faces: frame_idx (F,), boxes (F, 4), kps (F, 5, 2),
    scores (F,), blur (F,), emb (F, D)."""
    frame_idx: np.ndarray
    boxes: np.ndarray
    kps: np.ndarray
    scores: np.ndarray
    blur: np.ndarray
    emb: np.ndarray

    @staticmethod
    def concat(batches: list["FaceBatch"], dim: int) -> "FaceBatch":
        if not batches:
            return FaceBatch(np.zeros(0, np.int64), np.zeros((0, 4), np.float32),
                             np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32),
                             np.zeros(0, np.float32), np.zeros((0, dim), np.float32))
        return FaceBatch(*(np.concatenate([getattr(b, f) for b in batches])
                           for f in FaceBatch.__dataclass_fields__))


@dataclass(frozen=True)
class TitleTracks:
    """Everything a shard row needs, per track (T tracks)."""
    faces: FaceBatch
    members: list              # T arrays of face indices
    shot_id: np.ndarray        # (T,)
    quality: np.ndarray        # (T,)
    invalid_reason: list       # T entries, None when valid
    tracklets: list            # T harvest.miners.Tracklets
    cannot_link: list          # T sorted lists of track indices
    hard_negative: np.ndarray  # (T,) index or -1


@dataclass(frozen=True)
class TitleResult:
    info: VideoInfo
    frames: int                # frames actually decoded
    shot_boundaries: list
    tracks: TitleTracks
    times: StageTimes
    seconds: float


# -- stages ----------------------------------------------------------------------------------

def decode_stage(reader: ChunkedVideoReader, shots: ShotDetector, on_progress=None):
    def stage(_start: Iterator) -> Iterator:
        for _ in _start:
            for chunk in reader.chunks():
                shots.update(chunk.start, chunk.frames)
                if on_progress is not None:
                    on_progress(chunk.stop, reader.info.reported_frames)
                yield chunk
    return stage


def detect_stage(backend: FaceBackend, stride: int, batch: int, min_face_size: float):
    def stage(chunks: Iterator) -> Iterator:
        for chunk in chunks:
            picks = [i for i in range(len(chunk.frames)) if (chunk.start + i) % stride == 0]
            for s in range(0, len(picks), batch):
                idx = picks[s:s + batch]
                frames = [chunk.frames[i] for i in idx]
                for i, frame, dets in zip(idx, frames, backend.detect(frames)):
                    dets = dets.keep(face_size(dets.boxes) >= min_face_size)
                    if len(dets):
                        yield DetectedFrame(chunk.start + i, frame, dets)
    return stage


def embed_stage(backend: FaceBackend, batch: int):
    def flush(pending: list) -> FaceBatch:
        crops = np.concatenate([c for _, c in pending])
        emb = backend.embed(crops)
        return FaceBatch(
            np.concatenate([np.full(len(d.dets), d.frame_idx, np.int64) for d, _ in pending]),
            np.concatenate([d.dets.boxes for d, _ in pending]),
            np.concatenate([d.dets.kps for d, _ in pending]),
            np.concatenate([d.dets.scores for d, _ in pending]),
            blur_score(crops), emb)

    def stage(detected: Iterator) -> Iterator:
        pending, n = [], 0
        for d in detected:
            crops = backend.align(d.frame, d.dets)
            pending.append((d, crops))
            n += len(crops)
            if n >= batch:
                yield flush(pending)
                pending, n = [], 0
        if pending:
            yield flush(pending)
    return stage


# -- after the frames: tracks, quality, mining ------------------------------------------------

def build_tracks(faces: FaceBatch, shots: ShotDetector, fps: float, config: HarvestConfig) -> TitleTracks:
    fps = fps if fps and fps > 0 else 25.0
    order = np.argsort(faces.frame_idx, kind="stable")
    faces = FaceBatch(*(getattr(faces, f)[order] for f in FaceBatch.__dataclass_fields__))
    face_shot = shots.shot_of(faces.frame_idx)
    max_gap = max(config.det_stride, int(round(config.max_gap_seconds * fps)))
    members = link_tracks(faces.frame_idx, faces.boxes, face_shot,
                          iou_threshold=config.iou_threshold, max_gap=max_gap)
    size = face_size(faces.boxes)
    fq = face_quality(faces.scores, size, faces.blur)
    quality = np.array([track_quality(fq[m]) for m in members], np.float32)
    span = np.array([faces.frame_idx[m[-1]] - faces.frame_idx[m[0]] + config.det_stride
                     for m in members], np.float64)
    reasons: list = [None] * len(members)
    long_enough = span / fps >= config.min_track_seconds
    for t in np.flatnonzero(~long_enough):
        reasons[t] = "short"
    candidates = np.flatnonzero(long_enough)
    for t in candidates[mad_outliers(quality[candidates], config.quality_mad_k)]:
        reasons[t] = "low_quality"
    valid = np.array([r is None for r in reasons], bool)

    trackset = TrackSet([faces.frame_idx[m] for m in members], [faces.emb[m] for m in members], valid)
    pairs = CannotLinkMiner().mine(trackset)
    links = adjacency(pairs, len(members))
    tracklets = HardPositiveMiner(N_TRACKLETS).mine(trackset)
    anchors = np.stack([tl.vectors[0] if tl.vectors is not None else mean
                        for tl, mean in zip(tracklets, trackset.mean_embeddings)]) \
        if members else np.zeros((0, faces.emb.shape[1]), np.float32)
    hard_neg = HardNegativeMiner().mine(trackset, cannot_link=links, anchors=anchors)
    shot_id = np.array([face_shot[m[0]] for m in members], np.int32)
    return TitleTracks(faces, members, shot_id, quality, reasons, tracklets, links, hard_neg)


def harvest_title(path: str, backend: FaceBackend, config: HarvestConfig,
                  options: RunOptions | None = None, on_progress=None) -> TitleResult:
    """Harvest one local video file. Raises harvest.decode.DecodeError on unreadable input.
    ``on_progress(frames_decoded, frames_reported)`` is called after every decoded chunk."""
    options = options or RunOptions()
    t0 = time.perf_counter()
    times = StageTimes()
    shots = ShotDetector(config.shot_threshold, config.min_shot_frames)
    with ChunkedVideoReader(path, chunk_frames=options.chunk_frames) as reader:
        stages = [("decode", decode_stage(reader, shots, on_progress)),
                  ("detect", detect_stage(backend, config.det_stride, options.det_batch,
                                          config.min_face_size)),
                  ("embed", embed_stage(backend, options.embed_batch))]
        batches = list(run_chain([None], stages, threaded=options.pipelined, times=times))
        info, frames = reader.info, reader.frames_read
    faces = FaceBatch.concat(batches, backend.embedding_dim)
    t1 = time.perf_counter()
    tracks = build_tracks(faces, shots, info.fps, config)
    times.add("track_mine", time.perf_counter() - t1)
    return TitleResult(info, frames, list(shots.boundaries), tracks, times,
                       time.perf_counter() - t0)
