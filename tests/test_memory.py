"""Peak memory of the hot per-title calls stays bounded: no N x N per track, nothing that grows
with the title beyond small per-track summaries.

numpy reports its allocations to ``tracemalloc``; Arrow's memory pool does not, so the streamed
title is also run in child processes whose peak RSS (VmHWM: ``ru_maxrss`` of a child starts at
its parent's RSS when it was spawned, so it would measure the pytest process) is compared across
lengths.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from harvest.miners import mine_tracklets
from harvest.vectors import l2_normalize

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
    from harvest.title.tracks import FaceBatch
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
    from harvest.dataset import shard
    from harvest.config import HarvestConfig
    from harvest.title.tracks import TitleTracker
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
    from harvest.dataset import shard
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
import test_memory
test_memory.SMALL_FLUSH = {flush}
with tempfile.TemporaryDirectory() as d:
    test_memory.run_title({frames}, d)
print(next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")))
"""


def child_peak_rss(frames: int, flush: int = 1 << 20) -> int:
    # jemalloc, as a harvest worker runs (harvest.run.worker.use_jemalloc), not pyarrow's
    # default mimalloc: the same child's peak under mimalloc varies by up to 20 MB from run to
    # run (it hides or fakes a growth this test looks for); under jemalloc by 2-3 MB.
    env = dict(os.environ, ARROW_DEFAULT_MEMORY_POOL="jemalloc")
    out = subprocess.run([sys.executable, "-c", CHILD.format(path=sys.path, frames=frames,
                                                             flush=flush)],
                         check=True, capture_output=True, text=True, env=env).stdout
    return int(out.split()[-1]) * 1024


def test_streamed_title_peak_rss_is_flat_in_title_length():
    # 8x the frames (tracks: 96 -> 768): the long title's embeddings alone are 157 MB, 137 MB
    # more than the short one's. What may grow: ~4.5 KB per track (its mean and anchor, its
    # partners; 3 MB), the summaries' array doubling (6 MB while it grows) and the Parquet
    # writers' metadata, ~27 KB per row group (5 MB). Measured (jemalloc, row groups of 1 MB):
    # 227-232 and 237-241 MB, a growth of 5-14 MB; 30 MB is under a fifth of the embeddings
    short, long = child_peak_rss(6_000), child_peak_rss(48_000)
    print(f"child peak RSS: 6000 frames {short / MB:.0f} MB, 48000 frames {long / MB:.0f} MB")
    assert long - short < 30 * MB


def one_face_shot(frames: int, dim: int, jpeg_bytes: int, batch_frames: int = 250):
    """FaceBatches of one face in one unbroken shot; face i's crop is ``jpeg_bytes`` bytes that
    name it (b"face 17 ....")."""
    from harvest.title.tracks import FaceBatch
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
    from harvest.title.tracks import TitleTracker
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
    from harvest.title.tracks import TitleTracker
    tracker = TitleTracker(HarvestConfig(crops="all"), 25.0, 64, str(tmp_path))
    for batch in one_face_shot(300, 64, 100, batch_frames=100):
        tracker.add(batch)
    scratch = tracker.scratch.name
    assert any(p.startswith("crops-") for p in os.listdir(scratch))
    tracker.close()
    assert not os.path.exists(scratch)


# -- detector batches: bounded bytes at any resolution, the same detections -------------------

FRAME_4K = 3840 * 2160 * 3                   # 25 MB of RGB


def write_4k_video(path: str, frames: int) -> str:
    """A 3840x2160 H.264 clip written with PyAV: frame 0 of crowd.mp4 (1080p, a crowd of faces)
    upscaled 2x and panned 8 pixels a frame, so every frame has faces to detect and align."""
    import av
    import cv2

    from conftest import CROWD, need
    from harvest.video.decode import ChunkedVideoReader
    with ChunkedVideoReader(need(CROWD), chunk_frames=1) as r:
        big = cv2.resize(next(iter(r.chunks())).frames[0], (3840, 2160))
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 3840, 2160, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(big, 8 * i, axis=1), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


CHILD_4K = """
import resource, sys, tempfile
sys.path[:0] = {path!r}
from harvest.config import HarvestConfig, RunOptions
from harvest.faces.registry import load_backend
from harvest.title.pipeline import harvest_title
config = HarvestConfig(backend={backend!r}, models={models!r}, crops="none")
backend = load_backend(config, threads=2)
before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
with tempfile.TemporaryDirectory() as d:
    result = harvest_title({video!r}, backend, config,
                           RunOptions(det_batch=64, embed_batch=8, scratch_dir=d))
    faces = result.tracks.faces
    result.tracks.close()
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
print(result.frames, faces, before, peak * 1024)
"""


@pytest.fixture(scope="module")
def video_4k(tmp_path_factory):
    return write_4k_video(str(tmp_path_factory.mktemp("4k") / "crowd_4k.mp4"), frames=32)


# peak RSS growth of a 32-frame 4K title at --det-batch 64 (measured on 2 cores): before the
# bound, the one 32-frame batch held 800 MB of frames, and the torch backend stacked them and
# converted them to float (3.2 GB more): insightface 1,707 MB, torch 4,794 MB. Now batches hold
# at most MAX_HELD_FRAME_BYTES of frames (16 at 4K) and the detector sees 640 x 384 images:
# insightface 1,230 MB (of which ~700 MB is onnxruntime's arena for a batch of 16), torch
# 2,367 MB (of which ~1.2 GB is the torch detector's activations for a batch of 16).
RSS_BOUND_4K = {"insightface": 1_450 * MB, "torch": 3_200 * MB}


@pytest.mark.parametrize("backend", ["insightface", "torch"])
def test_a_4k_title_at_det_batch_64_stays_within_a_memory_bound(backend, video_4k):
    from conftest import FACE_PACK, need
    from harvest.title.pipeline import MAX_HELD_FRAME_BYTES
    assert MAX_HELD_FRAME_BYTES // FRAME_4K == 16
    code = CHILD_4K.format(path=sys.path, backend=backend, models=need(FACE_PACK), video=video_4k)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    frames, faces, before, peak = (int(v) for v in out.split()[-4:])
    print(f"{backend}: 4K title, {frames} frames, {faces} faces: peak RSS "
          f"{peak / MB:.0f} MB, growth {(peak - before) / MB:.0f} MB")
    assert frames == 32 and faces >= 32                  # faces were found and aligned
    assert peak - before < RSS_BOUND_4K[backend]


def _crowd_chunks(backend, frames: int):
    """The first ``frames`` frames of crowd.mp4 (1080p: chunks of 4 frames) as ShotChunks, on
    the backend's frame device."""
    from conftest import CROWD, need
    from harvest.title.pipeline import ShotChunk
    from harvest.video.readers import open_reader
    with open_reader(need(CROWD), device=backend.frame_device) as r:
        chunks = []
        for c in r.chunks():
            n = len(c.frames)
            chunks.append(ShotChunk(c.start, c.frames, np.zeros(n, np.int32), c.pts))
            if c.stop >= frames:
                return chunks


class _CountingBackend:
    """A backend that records the size of each detector call and calls ``on_detect`` first (and
    is otherwise the backend)."""

    def __init__(self, backend, on_detect=lambda: None):
        self.backend, self.on_detect, self.sizes = backend, on_detect, []

    def detect(self, inputs):
        self.on_detect()
        self.sizes.append(len(inputs))
        return self.backend.detect(inputs)

    def __getattr__(self, name):
        return getattr(self.backend, name)


@pytest.fixture(scope="module")
def pack_backends():
    """Both face-pack backends on the CPU (float32: the recorded run's arithmetic) even where a
    GPU is visible."""
    from conftest import FACE_PACK, need
    from harvest.faces.insightface_backend import InsightFaceBackend
    from harvest.faces.torch_backend import TorchFaceBackend
    return {"insightface": InsightFaceBackend(need(FACE_PACK), threads=2),
            "torch": TorchFaceBackend(need(FACE_PACK), use_gpu=False, threads=2)}


@pytest.mark.parametrize("name", ["insightface", "torch"])
def test_detector_batches_stop_at_the_frame_byte_cap_with_the_same_results(name, pack_backends):
    """At stride 3 a batch of 64 frames is cut at the cap (here 3 full 1080p frames), and gives
    what one frame per call gives: boxes, landmarks, scores and aligned crops."""
    from harvest.title.pipeline import detect_stage
    backend = pack_backends[name]
    chunks = _crowd_chunks(backend, 24)
    frame_bytes = 1920 * 1080 * 3
    capped = _CountingBackend(backend)
    got = list(detect_stage(capped, 3, 64, 0.0, max_held_bytes=3 * frame_bytes)(iter(chunks)))
    one = list(detect_stage(backend, 3, 1, 0.0)(iter(chunks)))
    assert capped.sizes == [3, 3, 2]                         # 8 picked frames
    assert [d.frame_idx for d in got] == [d.frame_idx for d in one]
    assert sum(len(d.dets) for d in got) >= 30
    for a, b in zip(got, one):
        np.testing.assert_allclose(a.dets.boxes, b.dets.boxes, atol=1e-3)
        np.testing.assert_allclose(a.dets.kps, b.dets.kps, atol=1e-3)
        np.testing.assert_allclose(a.dets.scores, b.dets.scores, atol=1e-5)
        assert np.abs(a.crops.astype(int) - b.crops).max() <= 1


def test_a_strided_detector_batch_keeps_no_decode_chunk_alive(pack_backends):
    """At stride 3 a batch takes one frame in three: it holds copies of its frames, not views
    that would keep each 4-frame 1080p chunk (24 MiB) alive for one frame's 6 MB."""
    import weakref

    from conftest import CROWD, need
    from harvest.title.pipeline import ShotChunk, detect_stage
    from harvest.video.readers import open_reader
    buffers, alive = [], []
    backend = _CountingBackend(pack_backends["insightface"],
                               lambda: alive.append(sum(b() is not None for b in buffers)))

    def chunks():
        with open_reader(need(CROWD)) as r:
            for c in r.chunks():
                buffers.append(weakref.ref(c.frames.base))
                yield ShotChunk(c.start, c.frames, np.zeros(len(c.frames), np.int32), c.pts)
                if c.stop >= 48:
                    return

    found = list(detect_stage(backend, 3, 64, 0.0)(chunks()))
    assert len(buffers) == 12 and len(alive) == 1 and len(found) == 16
    assert alive[0] <= 2                     # the chunk in hand; all 12 when frames were views


RECORDED = Path(__file__).parent / "data" / "crowd_detections.json"


@pytest.mark.parametrize("name", ["insightface", "torch"])
def test_detections_match_the_run_recorded_before_frames_were_prepared_one_by_one(
        name, pack_backends):
    """Every 5th frame of crowd.mp4, detected in batches of 8, against boxes and scores recorded
    (to 0.01 px, 1e-4) with the code that letterboxed whole batches of full frames (commit
    a7f26b0). Faces within 0.01 of the score cut may come and go with the CPU's float kernels."""
    import json

    from conftest import CROWD, need
    from harvest.video.decode import ChunkedVideoReader
    backend = pack_backends[name]
    with ChunkedVideoReader(need(CROWD), chunk_frames=35) as r:
        frames = [f for c in r.chunks() for i, f in enumerate(c.frames) if (c.start + i) % 5 == 0]
    dets = [d for s in range(0, len(frames), 8) for d in backend.detect(frames[s:s + 8])]
    recorded = json.loads(RECORDED.read_text())[name]
    assert len(dets) == len(recorded) == 21
    clear = backend.det_threshold + 0.01
    for d, rec in zip(dets, recorded):
        rec = np.array(rec, np.float64).reshape(-1, 5)
        ours = np.hstack([d.boxes, d.scores[:, None]]).astype(np.float64)
        for a, b in ((rec, ours), (ours, rec)):          # each clear face has its twin
            for face in a[a[:, 4] >= clear]:
                gap = np.abs(b[:, :4] - face[:4]).max(axis=1) if len(b) else np.array([np.inf])
                k = int(np.argmin(gap))
                assert gap[k] < 0.05 and abs(b[k, 4] - face[4]) < 1e-3, (face, b[k])
    assert sum(len(r) for r in recorded) >= 120


WORKER_POOL = """
import sys
sys.path[:0] = {path!r}
import pyarrow as pa
from harvest.config import HarvestConfig
from harvest.run.worker import TitleWorker
TitleWorker({out!r}, HarvestConfig(models={pack!r}))
print(pa.default_memory_pool().backend_name)
"""


def test_a_harvest_worker_allocates_from_jemalloc_unless_told_otherwise(tmp_path):
    """A harvest worker's process switches Arrow to jemalloc (its peak RSS is ~60 MB lower on a
    real 5-minute title, docs/benchmarks.md); ARROW_DEFAULT_MEMORY_POOL still decides."""
    from conftest import FACE_PACK, need
    code = WORKER_POOL.format(path=sys.path, out=str(tmp_path / "out"), pack=need(FACE_PACK))
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    pools = [subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True, env=dict(env, **extra)).stdout.split()[-1]
             for extra in ({}, {"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"})]
    assert pools == ["jemalloc", "mimalloc"]
