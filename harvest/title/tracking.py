"""Link per-frame detections into face tracks inside shots.

IoU association with optimal assignment (Hungarian, scipy), tracks closed after a gap longer than
``max_gap`` frames, and never continued across a shot boundary.

``TrackLinker`` is incremental: feed it one frame's faces at a time, in frame order, and it hands
back the tracks that closed, so only the open tracks (those of the current shot seen within the
last ``max_gap`` frames) are ever held. ``link_tracks`` is the same linker over whole arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from harvest.faces.boxes import iou_matrix


def interpolate_boxes(frame_idx: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frames inside a track's span that have no detection (not run through the detector at
    ``det_stride`` > 1, or missed by it) and their boxes, linearly interpolated between the two
    detections around each gap: ``(frames (M,) int64, boxes (M, 4) float32)``, M = span - N.
    O(span) time and memory."""
    f = np.asarray(frame_idx, np.int64)
    gaps = np.diff(f) - 1
    if len(f) < 2 or not (gaps > 0).any():
        return np.zeros(0, np.int64), np.zeros((0, 4), np.float32)
    gaps = np.maximum(gaps, 0)
    left = np.repeat(np.arange(len(gaps)), gaps)                     # detection before the gap
    step = np.arange(len(left)) - np.repeat(np.cumsum(gaps) - gaps, gaps) + 1   # 1..gap
    frames = f[left] + step
    w = (step / (gaps[left] + 1))[:, None]
    b = np.asarray(boxes, np.float64)
    return frames, ((1 - w) * b[left] + w * b[left + 1]).astype(np.float32)


@dataclass
class Track:
    """One track. ``track_id`` counts tracks in opening order (first frame, then the face's
    position inside that frame); ``faces`` holds the caller's per-face payloads in frame order
    (a list, or whatever ``TrackLinker``'s ``new_faces`` makes: anything with ``append``);
    ``partners`` the ids of the tracks that share at least one frame with it."""
    track_id: int
    shot: int
    faces: list
    last_frame: int
    last_box: np.ndarray
    partners: set = field(default_factory=set)


class TrackLinker:
    """``new_faces(track_id)`` makes a new track's face container (default: a list); the caller
    may store faces compactly (``harvest.title.tracks.OpenFaces``) instead of one object per face."""

    def __init__(self, iou_threshold: float = 0.3, max_gap: int = 12, new_faces=None):
        self.iou_threshold, self.max_gap = iou_threshold, max_gap
        self._new_faces = new_faces if new_faces is not None else (lambda _track_id: [])
        self._open: list[Track] = []          # in opening order (this orders assignment ties)
        self._shot: int | None = None
        self._frame: int | None = None
        self.n_opened = 0

    @property
    def n_open(self) -> int:
        return len(self._open)

    def push(self, frame: int, shot: int, boxes: np.ndarray, payloads) -> list[Track]:
        """All faces of frame ``frame`` (later than the previous call's): boxes (m, 4) and m
        payloads -> the tracks that closed before this frame (gap > max_gap or a cut)."""
        if self._frame is not None and frame <= self._frame:
            raise ValueError(f"faces must be sorted by frame: {frame} after {self._frame}")
        self._frame = frame
        closed: list[Track] = []
        if shot != self._shot:                           # a cut closes every open track
            closed, self._open, self._shot = self._open, [], shot
        still = [t for t in self._open if frame - t.last_frame <= self.max_gap]
        closed += [t for t in self._open if frame - t.last_frame > self.max_gap]
        self._open = still
        iou = iou_matrix(np.array([t.last_box for t in still]).reshape(-1, 4), boxes)
        rows, cols = linear_sum_assignment(-iou) if iou.size else ([], [])
        here, used = [], set()
        for r, c in zip(rows, cols):
            if iou[r, c] >= self.iou_threshold:
                t = still[r]
                t.faces.append(payloads[c])
                t.last_frame, t.last_box = frame, boxes[c]
                used.add(c)
                here.append(t)
        for c in range(len(boxes)):
            if c not in used:
                faces = self._new_faces(self.n_opened)
                faces.append(payloads[c])
                t = Track(self.n_opened, shot, faces, frame, boxes[c])
                self.n_opened += 1
                self._open.append(t)
                here.append(t)
        if len(here) > 1:                                # tracks sharing this frame
            ids = {t.track_id for t in here}
            for t in here:
                t.partners |= ids - {t.track_id}
        return closed

    def finish(self) -> list[Track]:
        """End of the video: every open track closes."""
        closed, self._open = self._open, []
        return closed


def link_tracks(frame_idx: np.ndarray, boxes: np.ndarray, shot_id: np.ndarray, *,
                iou_threshold: float = 0.3, max_gap: int = 12) -> list[np.ndarray]:
    """Group faces into tracks.

    frame_idx (F,) int, boxes (F, 4), shot_id (F,) int: one row per detected face, sorted by
    frame. Returns a list of (n_i,) int arrays of face indices, one per track, each sorted by
    frame, each inside one shot, never two faces of one frame in a track; in track_id order.
    """
    if len(frame_idx) and np.any(np.diff(frame_idx) < 0):
        raise ValueError("faces must be sorted by frame")
    linker = TrackLinker(iou_threshold, max_gap)
    done: list[Track] = []
    starts = np.flatnonzero(np.r_[True, np.diff(frame_idx) != 0]) if len(frame_idx) else []
    ends = list(starts[1:]) + [len(frame_idx)]
    for s, e in zip(starts, ends):
        done += linker.push(int(frame_idx[s]), int(shot_id[s]), boxes[s:e], range(s, e))
    done += linker.finish()
    return [np.asarray(t.faces, np.int64) for t in sorted(done, key=lambda t: t.track_id)]
