"""The ``nvdec`` reader: NVIDIA's hardware decoder through PyNvVideoCodec, frames kept on the GPU.

Chosen by the reader registry (``harvest.video.readers``) when the face backend wants its frames on a
CUDA device (the ``torch`` backend on a GPU), PyNvVideoCodec is installed and the stream is one
this path reproduces exactly as the CPU reader does (``unusable`` says why not: codec,
container, 8-bit 4:2:0, no rotation, square pixels, progressive). Anything else falls back to the CPU ``pyav``
reader, per title, and the shard metadata records which reader decoded it.

Decoding is sequential from the first frame (PyNvVideoCodec's ``SimpleDecoder.get_batch_frames``,
never an indexed read, so open-GOP files keep the numbering of a sequential decode, as the CPU
reader's). ``SimpleDecoder`` is documented for indexed, seekable containers, so the container
format from the CPU probe decides too, not the codec alone: MPEG-2 in MP4 is taken, an MPEG-TS
broadcast file goes to the CPU reader. A title NVDEC cannot finish (a decoder error mid-stream, a
stream that ends early) raises ``harvest.video.decode.ReaderFailed``, and the registry decodes it again
with the CPU reader from frame 0 (``harvest.video.readers.read_title``). A frame whose ``getPTS`` fails
is timed from the previous one and the frame rate, as the CPU reader times a frame without a
timestamp, and ``fallback`` says so (it becomes the shard's ``decoder_fallback``).

Each batch of decoded RGB frames is taken through DLPack into one (n, H, W, 3) uint8 CUDA tensor
that the detector, shot detector and aligner use in place; only aligned crops and shot-detection
thumbnails leave the GPU. Stream facts (``VideoInfo``), the chunk size rule and the truncation
rule come from the CPU reader's probe and ``harvest.video.decode``, so the two readers report the same
things.

Status: written against PyNvVideoCodec 2.2's documented API; it has not run on a GPU yet (no GPU
was lent to the session that wrote it). The selection rules are tested on CPU, and so are the CPU
fallback and the timestamp note, with a fake decoder in place of ``SimpleDecoder`` that hands on
PyAV's frames and then fails (tests/test_nvdec_fallback.py).
"""
from __future__ import annotations

import importlib.util
from fractions import Fraction
from typing import Iterator

import numpy as np

from harvest.video.decode import (MAX_CHUNK_BYTES, DecodeError, FrameChunk, ReaderFailed, VideoInfo,
                            _first_line, chunk_frames_within, truncation)

# codecs NVDEC decodes (FFmpeg decoder names as PyAV reports them) in 8-bit 4:2:0
NVDEC_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "vp8", "mpeg2video", "mpeg1video"})
NVDEC_PIX_FMTS = frozenset({"yuv420p", "yuvj420p", "nv12"})
# containers (FFmpeg demuxer names, as the CPU probe reports them) SimpleDecoder reads: the
# indexed, seekable ones it is documented for (MP4/MOV, Matroska/WebM); not MPEG-TS/PS, AVI, raw
NVDEC_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})


class NvdecReader:
    name = "nvdec"
    priority = 10               # tried before ``pyav`` (priority 100) where usable

    @classmethod
    def unusable(cls, info: VideoInfo, device) -> str:
        """Why this reader cannot decode a stream with ``info`` for a backend that wants frames on
        ``device`` ("" if it can). One rule per line; the registry records the reason."""
        if device is None or getattr(device, "type", "") != "cuda":
            return "the face backend takes its frames on the CPU"
        why = cls.stream_unusable(info)
        if why:
            return why
        if importlib.util.find_spec("PyNvVideoCodec") is None:
            return "PyNvVideoCodec is not installed"
        return ""

    @staticmethod
    def stream_unusable(info: VideoInfo) -> str:
        """Why this reader cannot reproduce the CPU reader's frames of a stream with ``info`` (the
        CPU probe's facts) ("" if it can)."""
        if info.codec not in NVDEC_CODECS:
            return f"codec {info.codec!r} is not decoded by NVDEC here"
        if info.container not in NVDEC_CONTAINERS:
            return (f"container {info.container!r} (SimpleDecoder reads indexed, seekable "
                    "containers: MP4/MOV, Matroska/WebM)")
        if info.pix_fmt not in NVDEC_PIX_FMTS:
            return f"pixel format {info.pix_fmt!r} (the NVDEC path takes 8-bit 4:2:0)"
        if info.rotation:
            return f"display rotation {info.rotation} degrees (applied by the CPU reader only)"
        if info.sample_aspect_ratio != "1:1":
            return f"non-square pixels ({info.sample_aspect_ratio}; resampled by the CPU reader only)"
        if info.interlaced:
            return "interlaced stream"
        return ""

    def __init__(self, path: str, info: VideoInfo, device, chunk_frames: int = 32,
                 tail_slack: int = 8, max_chunk_bytes: int | None = MAX_CHUNK_BYTES):
        self.path, self.info, self.device, self.tail_slack = str(path), info, device, tail_slack
        self.chunk_frames = chunk_frames_within(chunk_frames, info, max_chunk_bytes)
        self.frames_read, self.skipped_packets = 0, 0
        self.truncated, self.truncated_reason = False, ""
        self.fallback = ""          # what this reader left to a fallback (frame times), if anything
        self._tb = Fraction(info.time_base) if info.time_base else None
        self._last_pts: float | None = None
        self._untimed, self._pts_error = 0, ""     # frames without a PTS; the first reason
        try:
            self._dec = self._open_decoder()
        except Exception as e:  # noqa: BLE001 - the library raises its own exception types
            raise DecodeError(f"{self.path}: NVDEC cannot open the stream ({e})") from None

    def _open_decoder(self):
        """PyNvVideoCodec's decoder for the title, RGB frames in device memory. (The one seam a
        CPU test replaces, with a fake decoder, to inject NVDEC faults.)"""
        import PyNvVideoCodec as nvc
        return nvc.SimpleDecoder(self.path, gpu_id=self.device.index or 0,
                                 use_device_memory=True, output_color_type=nvc.OutputColorType.RGB)

    def _pts(self, frames: list, start: int) -> np.ndarray:
        """Each frame's presentation time (s) from its ``getPTS`` (time-base units). A frame
        without one gets the previous frame's time plus 1/fps (0.0 for the first), the CPU
        reader's rule for a frame without a timestamp; such frames are counted for the note."""
        step = 1.0 / self.info.fps if self.info.fps > 0 else 0.04
        out = np.empty(len(frames), np.float64)
        for k, f in enumerate(frames):
            try:
                if self._tb is None:
                    raise ValueError("the stream has no time base")
                t = float(f.getPTS() * self._tb)
            except Exception as e:  # noqa: BLE001 - any failure to read it: time from the rate
                if not self._untimed:
                    self._pts_error = (f"first at frame {start + k}: "
                                       f"{type(e).__name__}: {_first_line(e)}")
                self._untimed += 1
                t = self._last_pts + step if self._last_pts is not None else 0.0
            out[k] = self._last_pts = t
        return out

    def _next_batch(self, start: int):
        """The next decoded frames as one (n, H, W, 3) uint8 tensor on the device, with their
        times; None at the end of the stream. Any failure of the decoder, or of taking its
        frames, is ``ReaderFailed``."""
        import torch
        import torch.nn.functional as F

        h, w = self.info.height, self.info.width
        try:
            frames = self._dec.get_batch_frames(self.chunk_frames)
            if not frames:
                return None
            # DLPack views of the decoder's surfaces, copied into one tensor before the next call
            views = [torch.from_dlpack(f) for f in frames]
            if any(v.shape[:2] != (h, w) for v in views):  # mid-stream resolution change
                views = [v if v.shape[:2] == (h, w) else F.interpolate(
                    v.permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear",
                    align_corners=False)[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
                    for v in views]
            batch = torch.stack(views).to(self.device)
        except Exception as e:  # noqa: BLE001 - the library raises its own exception types
            raise ReaderFailed(f"NVDEC failed after {start} frames "
                               f"({type(e).__name__}: {_first_line(e)})") from e
        return batch, self._pts(frames, start)

    def chunks(self) -> Iterator[FrameChunk]:
        """Consecutive chunks from frame 0. Raises ``ReaderFailed`` where NVDEC cannot finish:
        a decoder error, or a stream that ends early by the CPU reader's truncation rule."""
        start = 0
        while (got := self._next_batch(start)) is not None:
            batch, pts = got
            self.frames_read = start + len(batch)
            yield FrameChunk(start, batch, pts)
            start += len(batch)
        self.truncated_reason = truncation(self.path, self.info.reported_frames, self.frames_read,
                                           tail_slack=self.tail_slack)
        self.truncated = bool(self.truncated_reason)
        if self.truncated:
            raise ReaderFailed(f"NVDEC ended early: {self.truncated_reason}")
        if self._untimed:
            self.fallback = (f"nvdec: getPTS failed for {self._untimed} of {self.frames_read} "
                             f"frames ({self._pts_error}); their times come from the frame rate")

    def close(self) -> None:
        self._dec = None

    def __enter__(self) -> "NvdecReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
