"""Link per-frame detections into face tracks inside shots.

IoU association with optimal assignment (Hungarian, scipy), tracks closed after a gap longer than
``max_gap`` frames, and never continued across a shot boundary.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (n, 4), b (m, 4) boxes x1, y1, x2, y2 -> (n, m) IoU."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass
class _Open:
    members: list[int]      # face indices, in frame order
    last_frame: int
    last_box: np.ndarray


def link_tracks(frame_idx: np.ndarray, boxes: np.ndarray, shot_id: np.ndarray, *,
                iou_threshold: float = 0.3, max_gap: int = 12) -> list[np.ndarray]:
    """Group faces into tracks.

    frame_idx (F,) int, boxes (F, 4), shot_id (F,) int: one row per detected face, sorted by
    frame. Returns a list of (n_i,) int arrays of face indices, one per track, each sorted by
    frame, each inside one shot, never two faces of one frame in a track.
    """
    if len(frame_idx) and np.any(np.diff(frame_idx) < 0):
        raise ValueError("faces must be sorted by frame")
    done: list[list[int]] = []
    open_: list[_Open] = []
    current_shot = None
    starts = np.flatnonzero(np.r_[True, np.diff(frame_idx) != 0]) if len(frame_idx) else []
    ends = list(starts[1:]) + [len(frame_idx)]
    for s, e in zip(starts, ends):
        f, shot = int(frame_idx[s]), int(shot_id[s])
        if shot != current_shot:                        # a cut closes every open track
            done += [t.members for t in open_]
            open_, current_shot = [], shot
        still = [t for t in open_ if f - t.last_frame <= max_gap]
        done += [t.members for t in open_ if f - t.last_frame > max_gap]
        open_ = still
        faces = np.arange(s, e)
        iou = iou_matrix(np.array([t.last_box for t in open_]).reshape(-1, 4), boxes[faces])
        rows, cols = linear_sum_assignment(-iou) if iou.size else ([], [])
        used = set()
        for r, c in zip(rows, cols):
            if iou[r, c] >= iou_threshold:
                t = open_[r]
                t.members.append(int(faces[c]))
                t.last_frame, t.last_box = f, boxes[faces[c]]
                used.add(c)
        for c, face in enumerate(faces):
            if c not in used:
                open_.append(_Open([int(face)], f, boxes[face]))
    done += [t.members for t in open_]
    return [np.asarray(m, np.int64) for m in sorted(done, key=lambda m: (frame_idx[m[0]], m[0]))]
