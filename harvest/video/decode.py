"""Frame-exact chunked video decoding: one sequential PyAV (FFmpeg) decode, never a seek.

Why PyAV and not decord (measured with decord 0.6.0 / PyAV 18, FFmpeg 8; tests/test_formats.py):
* decord's seek-based reads (``vr[i]``, strided ``get_batch``) return wrong frames on H.264 with
  B-frames / open GOP (dmlc/decord #54, #365); tests/test_decode.py keeps that hazard on record.
* decord's decode thread runs ahead of the consumer without bound: behind a slow consumer (the
  face detector) a 5-minute 480p H.264 title grew to 2.4-4.2 GB RSS after 1280 frames, whatever
  ``num_threads``. A pulled PyAV decode stays at ~105-145 MB.
* decord (bundled FFmpeg 4.1) cannot open AV1 (reported as "cannot find video stream"), ignores
  the display matrix (phone video comes out sideways), numbers frames from the first decodable
  one while its timestamps and count come from the packet index (a file starting mid-GOP gave
  shifted timestamps and 10 trailing copies of the last frame) and fails outright on corrupt
  leading packets. Speed (2-core machine, noisy): 1080p H.264 PyAV 110-160 frames/s vs decord
  24-94; 640x360 both ~450-800 frames/s; either is far above the detector's ~18 frames/s.

Frame numbering is the sequential decode order: frame k is the k-th frame the decoder outputs,
i.e. exactly what ``for f in container.decode(video=0)`` yields. Frames that cannot be decoded
(leading non-keyframes, corrupt packets) are skipped, not numbered; their loss shows in
``FrameChunk.pts`` (real presentation times, uneven for variable frame rate).

Frames are RGB uint8 (H, W, 3) in display geometry: the container's rotation (display matrix,
multiples of 90 degrees) is applied, and non-square pixels are resampled to square ones (width
scaled by the sample aspect ratio), so faces are upright and undistorted for the detector and
embedder. Boxes downstream are therefore in display pixels; ``VideoInfo`` records the coded size,
rotation and sample aspect ratio needed to map them back. Interlaced video is not deinterlaced
(one frame per coded frame; ``VideoInfo.interlaced`` says so). High bit depth is converted to 8 bit.
A mid-stream resolution change is scaled to the first frame's size.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

__all__ = ["DecodeError", "ReaderFailed", "VideoInfo", "FrameChunk", "ChunkedVideoReader",
           "MAX_CHUNK_BYTES", "chunk_frames_within", "truncation"]

# One chunk of decoded RGB frames is kept at or below this many bytes (at least one frame):
# 32 frames of 4K would be 800 MB; at this bound 360p chunks keep their 32 frames, 720p ones hold
# 8, 1080p 4 and 4K 1. Up to four chunks are alive in a worker (being decoded, two queued, being
# detected): a 1-minute 1080p harvest peaked at 1,322 MB RSS with 100 MiB chunks (16 frames) and
# at 929 MB with 24 MiB ones, with the same shard and no loss of speed (bench/long_title.py).
MAX_CHUNK_BYTES = 24 * 2**20

_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"moof", b"mfra",
              b"styp", b"sidx", b"meta", b"pdin"}


class DecodeError(Exception):
    """A video cannot be decoded (or only partly); the message says why, for humans."""


class ReaderFailed(DecodeError):
    """A preferred (GPU) reader could not finish a title it had started: a decoder error
    mid-stream, or a stream that ended early. Not a verdict on the file: the reader registry
    decodes the title again with the CPU reader from its first frame (``harvest.video.readers``)."""


@dataclass(frozen=True)
class VideoInfo:
    """Stream facts. ``width``/``height`` are the display size of the yielded frames (after
    rotation and square-pixel resampling); ``coded_width``/``coded_height`` the stored size.
    ``reported_frames`` comes from the container index (MP4: its samples whose data starts inside
    the file) and may be wrong; for containers without a count (Matroska) it is estimated from
    the duration. ``rotation`` is the display
    rotation applied (degrees counter-clockwise, 0/90/180/270); ``sample_aspect_ratio`` is
    "num:den" of the stored pixels (frames are resampled to 1:1); ``time_base`` is "num/den";
    ``container`` the container format as FFmpeg names it ("mov,mp4,m4a,3gp,3g2,mj2", "mpegts")."""
    fps: float
    width: int
    height: int
    reported_frames: int
    codec: str = ""
    pix_fmt: str = ""
    coded_width: int = 0
    coded_height: int = 0
    rotation: int = 0
    sample_aspect_ratio: str = "1:1"
    time_base: str = ""
    interlaced: bool = False
    container: str = ""


@dataclass(frozen=True)
class FrameChunk:
    """Frames ``start .. stop-1`` of the video; ``frames`` is (n, H, W, 3) uint8 RGB: a numpy
    array, or a torch tensor on the device the face backend runs on (a reader given a
    ``device``); ``pts`` is (n,) float64, each frame's presentation time in seconds (None:
    unknown, use frame index / fps)."""
    start: int
    frames: "np.ndarray | torch.Tensor"  # noqa: F821
    pts: np.ndarray | None = None

    @property
    def stop(self) -> int:
        return self.start + len(self.frames)


def _mp4_truncation(path: str) -> tuple[bool, bool, int]:
    """Walk top-level ISO-BMFF boxes (headers only). Returns (looks_mp4, has_moov, bytes_missing)."""
    size = os.path.getsize(path)
    pos, has_moov, looks_mp4 = 0, False, False
    with open(path, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            head = f.read(16)
            box_size, kind = struct.unpack(">I4s", head[:8])
            if kind not in _MP4_BOXES and not (looks_mp4 and kind.isalnum()):
                break
            looks_mp4 = True
            has_moov |= kind == b"moov"
            if box_size == 1 and len(head) == 16:
                box_size = struct.unpack(">Q", head[8:16])[0]
            elif box_size == 0:  # box runs to end of file
                box_size = size - pos
            if box_size < 8:
                break
            pos += box_size
    return looks_mp4, has_moov, max(0, pos - size) if looks_mp4 else 0


def chunk_frames_within(chunk_frames: int, info: "VideoInfo", max_chunk_bytes: int | None) -> int:
    """Frames per chunk: ``chunk_frames``, shrunk so one chunk of RGB frames stays within
    ``max_chunk_bytes`` (at least one frame). One rule for every reader."""
    if chunk_frames < 1:
        raise ValueError("chunk_frames must be >= 1")
    if max_chunk_bytes is None:
        return chunk_frames
    return max(1, min(chunk_frames, max_chunk_bytes // (info.width * info.height * 3)))


def truncation(path: str, reported: int, got: int, *, tail_slack: int = 8, skipped: int = 0,
               stop_reason: str = "", last_error: str = "") -> str:
    """After the last decoded frame: why the file counts as ended early, or "" if it does not.
    One rule for every reader: a demuxer stop or a short MP4 is truncation, and so is getting
    more than ``tail_slack`` frames fewer than the container reports."""
    _, _, missing = _mp4_truncation(path)
    skipped_txt = f"; {skipped} packets undecodable" if skipped else ""
    why = stop_reason or (f"last decoder error: {last_error}" if last_error else "")
    why = f" ({why})" if why else ""
    if missing or stop_reason:
        return (f"decoding stopped after {got} of {reported} reported frames"
                + (f"; file is {missing} bytes short of its last box" if missing else "")
                + skipped_txt + why)
    if reported - got > tail_slack:
        return f"only {got} of {reported} reported frames decodable{skipped_txt}{why}"
    return ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class ChunkedVideoReader:
    """Read a video as consecutive :class:`FrameChunk` s (frame 0 upward), never seeking: the
    ``pyav`` reader of the reader registry (``harvest.video.readers``), decoding on the CPU.

    Holds at most one chunk (``chunk_frames`` x H x W x 3 bytes, ``chunk_frames`` shrunk so a
    chunk stays within ``max_chunk_bytes``) plus the decoder's own few frames. The first frame
    is decoded on open, so a file with no decodable frame fails fast. After iterating
    :meth:`chunks`, ``frames_read`` is the true number of decoded frames, ``skipped_packets``
    the packets the decoder rejected; ``truncated`` / ``truncated_reason`` say whether decoding
    stopped early on a damaged or short file.

    With a torch ``device`` each chunk is handed on as a uint8 tensor on that device (uploaded
    from pinned memory on CUDA, in the decode thread, so the copy overlaps detection): the
    CPU-decode, GPU-inference path.
    """
    name = "pyav"

    def __init__(self, path: str, chunk_frames: int = 32, num_threads: int = 0,
                 tail_slack: int = 8, max_chunk_bytes: int | None = MAX_CHUNK_BYTES,
                 device=None):
        if chunk_frames < 1:
            raise ValueError("chunk_frames must be >= 1")
        self.path, self.num_threads, self.tail_slack = str(path), num_threads, tail_slack
        self.device = device
        self.fallback = ""          # why a preferred reader was not used (set by the registry)
        self.frames_read, self.skipped_packets = 0, 0
        self.truncated, self.truncated_reason = False, ""
        self._stop_reason = self._last_error = ""
        self._container = self._open()
        try:
            self._stream = self._video_stream()
            self._frames = self._decode()
            first = next(self._frames, None)
            if first is None:
                raise DecodeError(f"{self.path}: zero frames decodable ({self._why_none()})")
            self._first = first
            self.info = self._info(first)
        except BaseException:
            self.close()
            raise
        self.chunk_frames = chunk_frames_within(chunk_frames, self.info, max_chunk_bytes)

    # -- open / probe --------------------------------------------------------------------------

    def _open(self) -> "av.container.InputContainer":
        p = self.path
        if not os.path.exists(p):
            raise DecodeError(f"{p}: no such file")
        if os.path.getsize(p) == 0:
            raise DecodeError(f"{p}: file is empty (0 bytes)")
        try:
            return av.open(p, metadata_errors="ignore")
        except av.error.FFmpegError as e:
            looks_mp4, has_moov, missing = _mp4_truncation(p)
            if looks_mp4 and not has_moov:
                raise DecodeError(f"{p}: truncated MP4 ({os.path.getsize(p)} bytes, {missing} bytes "
                                  "missing): the moov index is absent, no frame is decodable") from None
            raise DecodeError(f"{p}: not a video or unreadable container (ffmpeg: {_first_line(e)})") from None

    def _video_stream(self):
        c = self._container
        if not c.streams.video:
            kinds = ", ".join(f"{s.type} {s.codec_context.name if s.codec_context else '?'}"
                              for s in c.streams) or "none"
            raise DecodeError(f"{self.path}: no video stream in the container (streams: {kinds})")
        s = c.streams.video[0]
        ctx = s.codec_context
        if ctx is None or ctx.name in ("", "none") or not _has_decoder(ctx.name):
            tag = getattr(ctx, "codec_tag", "") if ctx is not None else ""
            raise DecodeError(f"{self.path}: unsupported video codec "
                              f"({ctx.name if ctx is not None else 'unknown'}{', tag ' + tag if tag else ''}): "
                              "no decoder for it in this FFmpeg build")
        s.thread_type = "AUTO"
        ctx.thread_count = self.num_threads
        return s

    def _info(self, first: "av.VideoFrame") -> VideoInfo:
        s, ctx = self._stream, self._stream.codec_context
        rate = s.average_rate or s.guessed_rate or s.base_rate
        fps = float(rate) if rate else 0.0
        sar = ctx.sample_aspect_ratio or s.sample_aspect_ratio
        sar = Fraction(sar) if sar and sar > 0 else Fraction(1)
        self._rot = _quarter_turns(getattr(first, "rotation", 0))
        self._stored_size = (max(1, round(first.width * sar)), first.height)  # square pixels
        h, w = self._convert(first).shape[:2]
        reported = int(s.frames or 0)
        entries = getattr(s, "index_entries", ())
        if reported and len(entries) == reported:  # a full sample index (MP4): count what the file holds
            size = os.path.getsize(self.path)
            reported = sum(1 for e in entries if e.pos < size)
        if reported <= 0 and fps > 0:  # e.g. Matroska/WebM carry no frame count
            if s.duration and s.time_base:
                reported = round(float(s.duration * s.time_base) * fps)
            elif self._container.duration:
                reported = round(self._container.duration / 1e6 * fps)
        return VideoInfo(fps, w, h, reported, ctx.name, first.format.name, first.width, first.height,
                         90 * self._rot, f"{sar.numerator}:{sar.denominator}",
                         f"{s.time_base.numerator}/{s.time_base.denominator}" if s.time_base else "",
                         bool(first.interlaced_frame), self._container.format.name)

    def _why_none(self) -> str:
        if self.skipped_packets:
            return f"the decoder rejected all {self.skipped_packets} packets"
        return self.truncated_reason or "the stream has no frames"

    # -- decode --------------------------------------------------------------------------------

    def _decode(self) -> Iterator["av.VideoFrame"]:
        """Every decodable frame in order. Packets the decoder rejects are skipped and counted;
        a demuxer error (damaged file) ends the stream and marks it truncated."""
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as e:
                self._stop_reason = f"demuxer: {_first_line(e)}"
                return
            try:
                frames = packet.decode()
            except av.error.EOFError:
                return
            except av.error.FFmpegError as e:
                self.skipped_packets += 1
                self._last_error = _first_line(e)
                continue
            yield from frames

    def _convert(self, frame: "av.VideoFrame") -> np.ndarray:
        """RGB uint8 in display geometry: square pixels, then the display rotation. A frame whose
        size differs from the first one's (a mid-stream resolution change) is scaled to it."""
        w, h = self._stored_size
        if (frame.width, frame.height) != (w, h):
            rgb = frame.to_ndarray(width=w, height=h, format="rgb24")
        else:
            rgb = frame.to_ndarray(format="rgb24")
        return np.rot90(rgb, self._rot) if self._rot else rgb

    def chunks(self) -> Iterator[FrameChunk]:
        """Yield consecutive chunks from frame 0 (once per reader)."""
        if self._first is None:
            raise RuntimeError("ChunkedVideoReader.chunks() can only be iterated once")
        frames, self._first = _prepend(self._first, self._frames), None
        h, w, n = self.info.height, self.info.width, self.chunk_frames
        start, last_pts, step = 0, None, 1.0 / self.info.fps if self.info.fps > 0 else 0.04
        while True:
            buf, pts, k = np.empty((n, h, w, 3), np.uint8), np.empty(n, np.float64), 0
            for frame in frames:
                try:
                    buf[k] = self._convert(frame)
                except (av.error.FFmpegError, ValueError) as e:
                    raise DecodeError(f"{self.path}: frame {start + k} ({frame.format.name}) cannot be "
                                      f"converted to RGB ({_first_line(e)})") from None
                t = frame.time
                pts[k] = last_pts = t if t is not None else (last_pts + step if last_pts is not None else 0.0)
                k += 1
                if k == n:
                    break
            if k == 0:
                break
            self.frames_read = start + k
            yield FrameChunk(start, buf[:k] if self.device is None else self._upload(buf[:k]),
                             pts[:k])
            start += k
            if k < n:
                break
        self._finish()

    def _upload(self, frames: np.ndarray):
        import torch
        t = torch.from_numpy(frames)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _finish(self) -> None:
        """After the last frame: decide whether the file ended early."""
        self.truncated_reason = truncation(
            self.path, self.info.reported_frames, self.frames_read, tail_slack=self.tail_slack,
            skipped=self.skipped_packets, stop_reason=self._stop_reason, last_error=self._last_error)
        self.truncated = bool(self.truncated_reason)

    def close(self) -> None:
        c, self._container = getattr(self, "_container", None), None
        self._frames = None
        if c is not None:
            c.close()

    def __enter__(self) -> "ChunkedVideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _prepend(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _quarter_turns(rotation) -> int:
    """Display-matrix rotation (degrees counter-clockwise) -> np.rot90 turns (0..3)."""
    return int(round((rotation or 0) / 90.0)) % 4 if rotation and math.isfinite(rotation) else 0


def _has_decoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "r")
    except Exception:  # noqa: BLE001 - PyAV raises UnknownCodecError (a ValueError) or FFmpegError
        return False
    return True
