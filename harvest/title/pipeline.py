"""The per-title work as a plain function: decode -> shots -> faces -> tracks -> quality -> mining.

``harvest_title`` needs no Ray; the runner calls it inside a worker that loaded the backend once.
The title is a list of stages (``harvest.title.stages.run_chain``): decode (with shot detection) ->
detect and align -> embed, each handing the next its own small type (``ShotChunk``,
``DetectedFrame``, ``FaceBatch``). The face batches feed the track life cycle
(``harvest.title.tracks.TitleTracker``): faces join tracks as they arrive, a closed track's row goes
to a local spill file, and the title's end decides validity, cannot-links and hard negatives.
Memory is bounded in the title's resolution: a detector batch holds at most
``MAX_HELD_FRAME_BYTES`` of full frames (kept for alignment) and hands the detector only
det-size images (``FaceBackend.prepare``). Face crops (``HarvestConfig.crops``) are
JPEG-encoded in the detect stage, right after alignment.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from harvest.config import HarvestConfig, RunOptions
from harvest.video.decode import VideoInfo
from harvest.faces.base import Detections, FaceBackend
from harvest.video.readers import read_title
from harvest.title.quality import blur_score, face_size
from harvest.dataset.shard import encode_crops
from harvest.video.shots import ShotDetector
from harvest.title.stages import StageTimes, run_chain
from harvest.title.tracks import FaceBatch, HarvestedTracks, TitleTracker


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
class TitleResult:
    info: VideoInfo
    frames: int                # frames actually decoded
    shot_boundaries: list
    tracks: HarvestedTracks
    times: StageTimes
    seconds: float
    decoder: str = "pyav"      # the reader that decoded the title (``harvest.video.readers``)
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


def harvest_title(path: str, backend: FaceBackend, config: HarvestConfig,
                  options: RunOptions | None = None, on_progress=None) -> TitleResult:
    """Harvest one local video file. Raises harvest.video.decode.DecodeError on unreadable input.
    ``on_progress(frames_decoded, frames_reported)`` is called after every decoded chunk.
    The result's ``tracks`` own a scratch directory (under ``options.scratch_dir``): close them.
    A GPU reader that cannot finish the title hands it to the CPU reader, which harvests it again
    from frame 0 (``harvest.video.readers.read_title``); the failed pass's tracks and scratch go."""
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
