"""Shot boundaries from the decoded frames (no second decode).

A content detector in the manner of PySceneDetect's ContentDetector: each frame is shrunk, turned
to HSV, and compared with the previous one; the mean absolute change of H, S and V (0..255 scale)
above ``threshold`` starts a new shot, unless the current shot is shorter than ``min_shot_frames``.
It runs incrementally (``update`` per chunk), so frames never have to be kept.
"""
from __future__ import annotations

import cv2
import numpy as np

_SMALL = (128, 72)


def frame_signature(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (72, 128, 3) int16 HSV thumbnail."""
    small = cv2.resize(frame, _SMALL, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_RGB2HSV).astype(np.int16)


def frame_signatures(frames) -> list[np.ndarray]:
    """(n, H, W, 3) uint8 RGB frames -> n signatures. A torch tensor (frames kept on the
    backend's device) is shrunk where it lives, as box averages like ``cv2.INTER_AREA``
    (identical for the usual 16:9 sizes, which divide exactly; within one grey level otherwise),
    and only the 72 x 128 thumbnails come to the host."""
    if isinstance(frames, np.ndarray):
        return [frame_signature(f) for f in frames]
    import torch
    import torch.nn.functional as F
    with torch.inference_mode():
        x = frames.permute(0, 3, 1, 2).float()
        small = F.interpolate(x, size=(_SMALL[1], _SMALL[0]), mode="area")
        # cv2 rounds the box average half up
        small = torch.floor(small + 0.5).clamp(0, 255).to(torch.uint8)
        thumbs = small.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return [cv2.cvtColor(t, cv2.COLOR_RGB2HSV).astype(np.int16) for t in thumbs]


def content_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over H, S, V of the mean absolute difference of two signatures (hue is circular)."""
    d = np.abs(a - b)
    d[..., 0] = np.minimum(d[..., 0], 180 - d[..., 0])
    d = d.astype(np.float32)
    d[..., 0] *= 255.0 / 90.0          # OpenCV hue spans 0..179; put it on the 0..255 scale
    return float(d.reshape(-1, 3).mean(axis=0).mean())


class ShotDetector:
    """Feed frames in order with ``update``; ``boundaries`` lists each shot's first frame.
    Keeps one signature and the boundaries (a few thousand for a film), nothing per frame."""

    def __init__(self, threshold: float = 27.0, min_shot_frames: int = 8):
        self.threshold = float(threshold)
        self.min_shot_frames = int(min_shot_frames)
        self.boundaries: list[int] = [0]
        self._prev: np.ndarray | None = None
        self._next_index = 0

    def update(self, start: int, frames: np.ndarray) -> None:
        """frames (n, H, W, 3) uint8 RGB (numpy, or a torch tensor on any device), numbered
        start..start+n-1, contiguous with the last call."""
        if start != self._next_index:
            raise ValueError(f"frames must arrive in order: expected {self._next_index}, got {start}")
        for i, sig in enumerate(frame_signatures(frames)):
            idx = start + i
            if self._prev is not None:
                score = content_change(self._prev, sig)
                if score >= self.threshold and idx - self.boundaries[-1] >= self.min_shot_frames:
                    self.boundaries.append(idx)
            self._prev = sig
        self._next_index = start + len(frames)

    def shot_of(self, frame_idx: np.ndarray) -> np.ndarray:
        """Shot id of each frame number: (n,) int -> (n,) int32."""
        return (np.searchsorted(self.boundaries, frame_idx, side="right") - 1).astype(np.int32)
