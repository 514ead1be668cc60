"""Peak memory of the hot per-title calls stays bounded: no N x N per track, nothing that grows
with the title beyond small per-track summaries.

numpy reports its allocations to ``tracemalloc``; Arrow's memory pool does not, so the streamed
title is also run in child processes whose peak RSS (ru_maxrss) is compared across lengths.
"""
from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc

import numpy as np

from harvest.miners import mine_tracklets
from harvest.miners.base import l2_normalize

MB = 1 << 20


def traced_peak(fn):
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        return out, tracemalloc.get_traced_memory()[1], seconds
    finally:
        tracemalloc.stop()


def test_tracklets_of_a_10000_face_track_in_bounded_memory():
    rng = np.random.default_rng(0)
    emb = l2_normalize(rng.normal(size=(10_000, 512)) + 2 * rng.normal(size=512))   # 20 MB
    tl, peak, seconds = traced_peak(lambda: mine_tracklets(emb, 3))
    print(f"mine_tracklets N=10000 D=512: peak {peak / MB:.0f} MB, {seconds:.1f} s")
    assert peak < 300 * MB            # the N x N x D tensor was 200 GB, N x N alone 400 MB
    assert [len(m) for m in tl.members] == [3333] * 3


def long_title(frames: int, dim: int, faces_per_frame: int = 2, batch_frames: int = 64):
    """FaceBatches of a synthetic title, generated lazily: walkers that leave and come back,
    a cut every 250 frames."""
    from harvest.pipeline import FaceBatch
    rng = np.random.default_rng(frames)
    people = l2_normalize(rng.normal(size=(faces_per_frame, dim)))
    for a in range(0, frames, batch_frames):
        f = np.arange(a, min(a + batch_frames, frames))
        f = f[(f // 40) % 5 != 4]                        # everyone leaves for 40 frames
        n = len(f) * faces_per_frame
        fi = np.repeat(f, faces_per_frame)
        p = np.tile(np.arange(faces_per_frame), len(f))
        x = 20 + 150.0 * p + (fi % 40)
        boxes = np.stack([x, np.full(n, 50.0), x + 80, np.full(n, 130.0)], 1).astype(np.float32)
        yield FaceBatch(fi.astype(np.int64), (fi // 250).astype(np.int32), fi / 25.0, boxes,
                        rng.uniform(0, 100, (n, 5, 2)).astype(np.float32),
                        rng.uniform(0.6, 1, n).astype(np.float32),
                        rng.uniform(50, 200, n).astype(np.float32),
                        l2_normalize(people[p] + 0.3 * rng.normal(size=(n, dim))))


DIM = 512
SMALL_FLUSH = 256 << 10   # spill / shard row groups of 256 KB: the titles below span many


def run_title(frames: int, scratch: str) -> tuple[int, int]:
    """Stream a synthetic title through tracking, mining and the shard writer -> (faces, tracks)."""
    from harvest import shard
    from harvest.config import HarvestConfig
    from harvest.pipeline import TitleTracker
    shard.FLUSH_BYTES = SMALL_FLUSH
    tracker = TitleTracker(HarvestConfig(), 25.0, DIM, scratch)
    for batch in long_title(frames, DIM):
        tracker.add(batch)
    meta = dict(title_id="long", source_uri="x", fps=25.0, width=640, height=360,
                frame_count=frames, backend="b", detector_file="", detector_sha256="",
                embedder_file="", embedder_sha256="", config_hash="c",
                shot_boundaries=list(range(0, frames, 250)))
    with tracker.finish() as tracks:
        tracks.write_shard("long", meta)
        return tracks.faces, len(tracks)


def test_streamed_title_memory_is_flat_in_title_length(tmp_path, monkeypatch):
    from harvest import shard
    monkeypatch.setattr(shard, "FLUSH_BYTES", SMALL_FLUSH)
    run_title(300, str(tmp_path))                     # imports and caches out of the way
    peaks = {}
    for frames in (1_500, 6_000):
        (faces, tracks), peak, seconds = traced_peak(lambda: run_title(frames, str(tmp_path)))
        peaks[frames] = peak
        print(f"streamed title {frames} frames, {faces} faces, {tracks} tracks: "
              f"traced peak {peak / MB:.1f} MB, {seconds:.1f} s")
    # 4x the faces (the long title's embeddings alone are 20 MB), not 4x the memory
    assert peaks[6_000] < 1.3 * peaks[1_500] + 2 * MB
    assert peaks[6_000] < 30 * MB


CHILD = """
import resource, sys, tempfile
sys.path[:0] = {path!r}
from test_memory import run_title
with tempfile.TemporaryDirectory() as d:
    run_title({frames}, d)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def child_peak_rss(frames: int) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD.format(path=sys.path, frames=frames)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) * 1024


def test_streamed_title_peak_rss_is_flat_in_title_length():
    short, long = child_peak_rss(1_500), child_peak_rss(6_000)
    print(f"child peak RSS: 1500 frames {short / MB:.0f} MB, 6000 frames {long / MB:.0f} MB")
    assert long - short < 12 * MB          # the long title's embeddings alone are 20 MB


def one_face_shot(frames: int, dim: int, jpeg_bytes: int, batch_frames: int = 250):
    """FaceBatches of one face in one unbroken shot; face i's crop is ``jpeg_bytes`` bytes that
    name it (b"face 17 ....")."""
    from harvest.pipeline import FaceBatch
    rng = np.random.default_rng(1)
    person = l2_normalize(rng.normal(size=(1, dim)))
    for a in range(0, frames, batch_frames):
        f = np.arange(a, min(a + batch_frames, frames))
        n = len(f)
        x = 100 + 10 * np.sin(f / 50.0)
        boxes = np.stack([x, np.full(n, 50.0), x + 80, np.full(n, 150.0)], 1).astype(np.float32)
        yield FaceBatch(f.astype(np.int64), np.zeros(n, np.int32), f / 25.0, boxes,
                        rng.uniform(0, 100, (n, 5, 2)).astype(np.float32),
                        np.full(n, 0.9, np.float32), np.full(n, 100.0, np.float32),
                        l2_normalize(person + 0.2 * rng.normal(size=(n, dim))).astype(np.float32),
                        [f"face {i} ".encode().ljust(jpeg_bytes, b".") for i in f])


def test_a_long_open_track_holds_its_embeddings_not_its_crops(tmp_path):
    """A 20,000-face single shot (one open track for the whole title): while it is open, memory is
    the compact per-face columns (~0.6 KB a face at D=128), not its 60 MB of JPEG crops nor a
    Python object per face; at close the crops kept (an even spread + tracklet seeds) are the
    right faces' bytes, and no spool file is left behind."""
    import os

    import pyarrow.parquet as pq

    from harvest.config import HarvestConfig
    from harvest.pipeline import TitleTracker
    frames, dim, jpeg = 20_000, 128, 3_000
    tracker = TitleTracker(HarvestConfig(crops="sample", crops_per_track=16), 25.0, dim,
                           str(tmp_path))
    batches = one_face_shot(frames, dim, jpeg)
    tracker.add(next(batches))                       # imports, first allocations
    tracemalloc.start()
    try:
        for batch in batches:
            tracker.add(batch)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"one open track of {frames} faces: traced {held / MB:.1f} MB held, "
          f"{peak / MB:.1f} MB peak (its crops are {frames * jpeg / MB:.0f} MB)")
    assert tracker.linker.n_open == 1
    columns = frames * (4 * dim + 80)                # embedding, boxes, landmarks, numbers
    assert held < 2 * columns                        # capacity doubles; the crops are 3 KB a face
    assert peak < 2 * held + 4 * MB                  # doubling growth, one batch in flight
    spools = [p for p in os.listdir(tracker.scratch.name) if p.startswith("crops-")]
    assert len(spools) == 1
    meta = dict(title_id="one", source_uri="x", fps=25.0, width=640, height=360,
                frame_count=frames, backend="b", detector_file="", detector_sha256="",
                embedder_file="", embedder_sha256="", config_hash="c", shot_boundaries=[0])
    with tracker.finish() as tracks:
        assert [p for p in os.listdir(tracks.scratch.name) if p.startswith("crops-")] == []
        path = tracks.write_shard("one", meta)
        row = pq.read_table(path).to_pylist()[0]
    assert row["n_faces"] == frames and row["frame_idx"] == list(range(frames))
    pos = row["crop_positions"]
    assert len(pos) >= 16 and pos[0] == 0 and pos[-1] == frames - 1
    assert [c[:12] for c in row["crops"]] == [f"face {p} ".encode().ljust(12, b".")[:12]
                                              for p in pos]
    assert all(len(c) == jpeg for c in row["crops"])


def test_a_failed_title_leaves_no_crop_spool(tmp_path):
    import os

    from harvest.config import HarvestConfig
    from harvest.pipeline import TitleTracker
    tracker = TitleTracker(HarvestConfig(crops="all"), 25.0, 64, str(tmp_path))
    for batch in one_face_shot(300, 64, 100, batch_frames=100):
        tracker.add(batch)
    scratch = tracker.scratch.name
    assert any(p.startswith("crops-") for p in os.listdir(scratch))
    tracker.close()
    assert not os.path.exists(scratch)
