"""The ``nvdec`` reader: NVIDIA's hardware decoder through PyNvVideoCodec, frames kept on the GPU.

Chosen by the reader registry (``harvest.readers``) when the face backend wants its frames on a
CUDA device (the ``torch`` backend on a GPU), PyNvVideoCodec is installed and the stream is one
this path reproduces exactly as the CPU reader does (``unusable`` says why not: codec, 8-bit
4:2:0, no rotation, square pixels, progressive). Anything else falls back to the CPU ``pyav``
reader, per title, and the shard metadata records which reader decoded it.

Decoding is sequential from the first frame (PyNvVideoCodec's ``SimpleDecoder.get_batch_frames``,
never an indexed read, so open-GOP files keep the numbering of a sequential decode, as the CPU
reader's). Each batch of decoded RGB frames is taken through DLPack into one (n, H, W, 3) uint8
CUDA tensor that the detector, shot detector and aligner use in place; only aligned crops and
shot-detection thumbnails leave the GPU. Stream facts (``VideoInfo``), the chunk size rule and
the truncation rule come from the CPU reader's probe and ``harvest.decode``, so the two readers
report the same things.

Status: written against PyNvVideoCodec 2.2's documented API; it has not run on a GPU yet (no GPU
was lent to the session that wrote it). The selection rules are tested on CPU.
"""
from __future__ import annotations

import importlib.util
from fractions import Fraction
from typing import Iterator

import numpy as np

from harvest.decode import (MAX_CHUNK_BYTES, DecodeError, FrameChunk, VideoInfo,
                            chunk_frames_within, truncation)

# codecs NVDEC decodes (FFmpeg decoder names as PyAV reports them) in 8-bit 4:2:0
NVDEC_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "vp8", "mpeg2video", "mpeg1video"})
NVDEC_PIX_FMTS = frozenset({"yuv420p", "yuvj420p", "nv12"})


class NvdecReader:
    name = "nvdec"
    priority = 10               # tried before ``pyav`` (priority 100) where usable

    @classmethod
    def unusable(cls, info: VideoInfo, device) -> str:
        """Why this reader cannot decode a stream with ``info`` for a backend that wants frames on
        ``device`` ("" if it can). One rule per line; the registry records the reason."""
        if device is None or getattr(device, "type", "") != "cuda":
            return "the face backend takes its frames on the CPU"
        if info.codec not in NVDEC_CODECS:
            return f"codec {info.codec!r} is not decoded by NVDEC here"
        if info.pix_fmt not in NVDEC_PIX_FMTS:
            return f"pixel format {info.pix_fmt!r} (the NVDEC path takes 8-bit 4:2:0)"
        if info.rotation:
            return f"display rotation {info.rotation} degrees (applied by the CPU reader only)"
        if info.sample_aspect_ratio != "1:1":
            return f"non-square pixels ({info.sample_aspect_ratio}; resampled by the CPU reader only)"
        if info.interlaced:
            return "interlaced stream"
        if importlib.util.find_spec("PyNvVideoCodec") is None:
            return "PyNvVideoCodec is not installed"
        return ""

    def __init__(self, path: str, info: VideoInfo, device, chunk_frames: int = 32,
                 tail_slack: int = 8, max_chunk_bytes: int | None = MAX_CHUNK_BYTES):
        import PyNvVideoCodec as nvc

        self.path, self.info, self.device, self.tail_slack = str(path), info, device, tail_slack
        self.chunk_frames = chunk_frames_within(chunk_frames, info, max_chunk_bytes)
        self.frames_read, self.skipped_packets = 0, 0
        self.truncated, self.truncated_reason, self.fallback = False, "", ""
        self._tb = Fraction(info.time_base) if info.time_base else None
        try:
            self._dec = nvc.SimpleDecoder(self.path, gpu_id=device.index or 0,
                                          use_device_memory=True,
                                          output_color_type=nvc.OutputColorType.RGB)
        except Exception as e:  # noqa: BLE001 - the library raises its own exception types
            raise DecodeError(f"{self.path}: NVDEC cannot open the stream ({e})") from None

    def _pts(self, frames: list, start: int) -> np.ndarray:
        step = 1.0 / self.info.fps if self.info.fps > 0 else 0.04
        out = np.arange(start, start + len(frames), dtype=np.float64) * step
        if self._tb is not None:
            try:
                out = np.array([float(f.getPTS() * self._tb) for f in frames], np.float64)
            except (AttributeError, TypeError):
                pass
        return out

    def chunks(self) -> Iterator[FrameChunk]:
        import torch
        import torch.nn.functional as F

        h, w, start = self.info.height, self.info.width, 0
        while True:
            frames = self._dec.get_batch_frames(self.chunk_frames)
            if not frames:
                break
            # DLPack views of the decoder's surfaces, copied into one tensor before the next call
            views = [torch.from_dlpack(f) for f in frames]
            if any(v.shape[:2] != (h, w) for v in views):  # mid-stream resolution change
                views = [v if v.shape[:2] == (h, w) else F.interpolate(
                    v.permute(2, 0, 1)[None].float(), size=(h, w), mode="bilinear",
                    align_corners=False)[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
                    for v in views]
            batch = torch.stack(views).to(self.device)
            pts = self._pts(frames, start)
            self.frames_read = start + len(views)
            yield FrameChunk(start, batch, pts)
            start += len(views)
        self.truncated_reason = truncation(self.path, self.info.reported_frames, self.frames_read,
                                           tail_slack=self.tail_slack)
        self.truncated = bool(self.truncated_reason)

    def close(self) -> None:
        self._dec = None

    def __enter__(self) -> "NvdecReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
