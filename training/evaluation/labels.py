"""Identity labels from a CSV (path or URL) and their assignment to harvested tracks.

Track level: columns ``title, track_id, identity``. Box level: ``title, frame, x1, y1, x2, y2,
identity``; a track gets the identity most of its faces match (IoU >= ``iou`` with a labelled
box in the same frame, best box per face). ``title`` matches a shard's title_id, its source
file name (basename) or that name without extension.
"""
from __future__ import annotations

import csv
import io
import os
from collections import Counter, defaultdict

import fsspec
import numpy as np

from harvest.faces.boxes import iou_matrix

TRACK_COLUMNS = ("title", "track_id", "identity")
BOX_COLUMNS = ("title", "frame", "x1", "y1", "x2", "y2", "identity")


class Labels:
    """Parsed label file: ``level`` is ``track`` or ``box``; ``by_title`` maps a label title to
    {track_id: identity} (track) or {frame: [(box (4,), identity), ...]} (box)."""

    def __init__(self, level: str, by_title: dict):
        self.level, self.by_title = level, by_title

    def key_for(self, title_id: str, source_uri: str) -> str | None:
        """The label title naming this shard, or None."""
        base = os.path.basename(source_uri.rstrip("/"))
        for key in (title_id, base, os.path.splitext(base)[0]):
            if key in self.by_title:
                return key
        return None


def read_labels(url: str) -> Labels:
    with fsspec.open(url, "rt", newline="") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    cols = set(rows[0]) if rows else set()
    by_title: dict = defaultdict(dict)
    if set(BOX_COLUMNS) <= cols:
        for r in rows:
            frames = by_title[r["title"]]
            box = np.array([float(r[k]) for k in ("x1", "y1", "x2", "y2")])
            frames.setdefault(int(r["frame"]), []).append((box, r["identity"]))
        return Labels("box", dict(by_title))
    if set(TRACK_COLUMNS) <= cols:
        for r in rows:
            by_title[r["title"]][int(r["track_id"])] = r["identity"]
        return Labels("track", dict(by_title))
    raise ValueError(f"{url}: columns {sorted(cols)} are neither {TRACK_COLUMNS} nor {BOX_COLUMNS}")


def assign(labels: Labels, key: str, track_ids, frame_idx=None, boxes=None,
           min_iou: float = 0.5) -> list:
    """Identity (or None) per track. Box level needs per-track ``frame_idx`` lists and
    ``boxes`` lists of (x1, y1, x2, y2)."""
    table = labels.by_title[key]
    if labels.level == "track":
        return [table.get(int(t)) for t in track_ids]
    out = []
    for frames, bxs in zip(frame_idx, boxes):
        votes = Counter()
        for fr, box in zip(frames, bxs):
            cands = table.get(int(fr))
            if not cands:
                continue
            scores = iou_matrix(np.asarray(box, np.float64)[None],
                                np.stack([c[0] for c in cands]).astype(np.float64))[0]
            best = int(np.argmax(scores))
            if scores[best] >= min_iou:
                votes[cands[best][1]] += 1
        out.append(votes.most_common(1)[0][0] if votes else None)
    return out
