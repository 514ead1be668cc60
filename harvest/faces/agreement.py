"""Do two face backends (or one backend in two precisions or on two devices) agree on real frames?

The one place where "the same detections, the same embeddings" is decided: the reduced-precision
test (tests/test_torch_backend.py) and the GPU acceptance command (bench/gpu_acceptance.py) both
call ``compare``. Per frame, the candidate's detections are matched one-to-one to the
reference's (greedy by IoU, highest first); a pair counts as the same face when its IoU exceeds
``MIN_IOU``. Each backend then aligns and embeds its *own* detections (what a harvest does with
them), and the embeddings of every matched pair are compared by cosine similarity.

Thresholds (issue #19): IoU > 0.9 for a matched face, detection counts within 2 %, at least
98 % of the reference's faces matched, cosine > 0.99 for every matched face.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_IOU = 0.9               # a pair of boxes is the same face above this IoU
MAX_COUNT_DIFF = 0.02       # |candidate faces - reference faces| / reference faces
MIN_MATCHED = 0.98          # reference faces with a match / reference faces
MIN_COSINE = 0.99           # every matched face's embedding cosine


@dataclass(frozen=True)
class Agreement:
    """How a candidate backend agrees with a reference on the same frames."""
    frames: int
    ref_faces: int
    cand_faces: int
    matched: int
    min_iou: float            # lowest IoU among matched pairs (1.0 when none)
    min_cosine: float         # lowest embedding cosine among matched pairs (1.0 when none)
    mean_cosine: float

    @property
    def count_diff(self) -> float:
        return abs(self.cand_faces - self.ref_faces) / max(self.ref_faces, 1)

    @property
    def matched_fraction(self) -> float:
        return self.matched / self.ref_faces if self.ref_faces else 1.0

    def failures(self) -> list[str]:
        """Each broken threshold, in words (empty: the two agree)."""
        out = []
        if self.count_diff > MAX_COUNT_DIFF:
            out.append(f"face counts differ by {100 * self.count_diff:.1f} % "
                       f"({self.cand_faces} vs {self.ref_faces}; limit {100 * MAX_COUNT_DIFF:g} %)")
        if self.matched_fraction < MIN_MATCHED:
            out.append(f"{self.matched} of {self.ref_faces} faces matched at IoU > {MIN_IOU} "
                       f"({100 * self.matched_fraction:.1f} %; need {100 * MIN_MATCHED:g} %)")
        if self.matched and self.min_cosine <= MIN_COSINE:
            out.append(f"lowest embedding cosine {self.min_cosine:.4f} (need > {MIN_COSINE})")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures()

    def summary(self) -> str:
        return (f"{self.frames} frames, faces {self.cand_faces}/{self.ref_faces}, matched "
                f"{self.matched} ({100 * self.matched_fraction:.1f} %), min IoU {self.min_iou:.3f}, "
                f"cosine min {self.min_cosine:.4f} mean {self.mean_cosine:.4f}")


def match_boxes(ref: np.ndarray, cand: np.ndarray, min_iou: float = MIN_IOU) -> list[tuple[int, int, float]]:
    """One-to-one matches (ref index, cand index, IoU) with IoU > ``min_iou``, greedy from the
    highest IoU down."""
    from harvest.faces.boxes import iou_matrix
    iou = iou_matrix(np.asarray(ref, np.float32).reshape(-1, 4),
                     np.asarray(cand, np.float32).reshape(-1, 4))
    pairs = []
    if iou.size == 0:
        return pairs
    used_r, used_c = set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] <= min_iou:
            break
        if i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
            pairs.append((i, j, float(iou[i, j])))
    return pairs


def faces(backend, frames) -> list[tuple]:
    """(Detections, embeddings (n, D)) of each frame: ``backend`` detects in one batch, then
    aligns and embeds its own detections."""
    out = []
    for frame, dets in zip(frames, backend.detect(frames)):
        out.append((dets, backend.embed(backend.align(frame, dets))))
    return out


def compare(reference, candidate, frames, batch: int = 8) -> Agreement:
    """Run both backends on ``frames`` (lists of (H, W, 3) uint8 RGB arrays; ``batch`` at a
    time) and measure how the candidate agrees with the reference."""
    ref_n = cand_n = 0
    ious, cosines = [], []
    for s in range(0, len(frames), batch):
        part = frames[s:s + batch]
        for (rd, re), (cd, ce) in zip(faces(reference, part), faces(candidate, part)):
            ref_n, cand_n = ref_n + len(rd), cand_n + len(cd)
            for i, j, iou in match_boxes(rd.boxes, cd.boxes):
                ious.append(iou)
                cosines.append(float(np.dot(re[i], ce[j])))
    return Agreement(frames=len(frames), ref_faces=ref_n, cand_faces=cand_n, matched=len(ious),
                     min_iou=min(ious, default=1.0), min_cosine=min(cosines, default=1.0),
                     mean_cosine=float(np.mean(cosines)) if cosines else 1.0)


MIN_TRACK_IOU = 0.8         # every frame of a matched track: boxes above this IoU
MIN_TRACKS_MATCHED = 0.9    # reference tracks with an identical candidate track / reference tracks


def read_tracks(path: str) -> list[tuple[tuple, np.ndarray]]:
    """The tracks of a shard (or of a title's spill file) as (frame indices, (n, 4) boxes)."""
    import pyarrow.parquet as pq
    table = pq.read_table(path, columns=["frame_idx", "boxes"]).to_pydict()
    return [(tuple(f), np.array(b, np.float32).reshape(-1, 4))
            for f, b in zip(table["frame_idx"], table["boxes"])]


def match_tracks(ref: list, cand: list, min_iou: float = MIN_TRACK_IOU) -> int:
    """How many reference tracks have a candidate track on exactly the same frames with every
    box above ``min_iou`` IoU (each candidate track used once)."""
    from harvest.faces.boxes import iou_matrix
    free, same = list(cand), 0
    for frames, boxes in ref:
        for k, (f2, b2) in enumerate(free):
            if f2 == frames and np.diag(iou_matrix(boxes, b2)).min() > min_iou:
                same += 1
                free.pop(k)
                break
    return same
