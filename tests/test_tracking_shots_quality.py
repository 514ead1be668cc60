"""Tracking, shot detection, quality and the stage runner on controlled inputs."""
import threading
import time

import numpy as np
import pytest

from harvest.title.quality import mad_outliers
from harvest.video.shots import ShotDetector
from harvest.title.stages import StageTimes, run_chain
from harvest.faces.boxes import iou_matrix
from harvest.title.tracking import link_tracks


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b)[0], [1.0, 50 / 150, 0.0], atol=1e-6)


def two_walkers(n=20, cut=None):
    rows = []
    for f in range(n):
        rows.append((f, [10 + 2 * f, 10, 60 + 2 * f, 60]))
        rows.append((f, [200 - 2 * f, 10, 250 - 2 * f, 60]))
    frames = np.array([r[0] for r in rows])
    boxes = np.array([r[1] for r in rows], np.float32)
    shot = (frames >= cut).astype(int) if cut else np.zeros(len(frames), int)
    return frames, boxes, shot


def test_two_crossing_free_walkers_make_two_pure_tracks():
    frames, boxes, shot = two_walkers()
    tracks = link_tracks(frames, boxes, shot)
    assert len(tracks) == 2
    for t in tracks:
        assert len(t) == 20 and np.all(np.diff(frames[t]) == 1)
        assert np.all(np.diff(boxes[t, 0]) != 0)
        assert len(set(np.sign(np.diff(boxes[t, 0])))) == 1     # one walker per track


def test_tracks_never_cross_a_cut():
    frames, boxes, shot = two_walkers(cut=10)
    tracks = link_tracks(frames, boxes, shot)
    assert len(tracks) == 4
    for t in tracks:
        assert len(set(shot[t])) == 1


def test_gap_longer_than_max_gap_splits_track():
    frames = np.array([0, 1, 2, 10, 11])
    boxes = np.tile(np.array([[0, 0, 50, 50]], np.float32), (5, 1))
    assert len(link_tracks(frames, boxes, np.zeros(5, int), max_gap=5)) == 2
    assert len(link_tracks(frames, boxes, np.zeros(5, int), max_gap=8)) == 1


def test_mad_rule_matches_methods_vector():
    q = np.array([0.80, 0.82, 0.79, 0.81, 0.83, 0.60, 0.78, 0.84])
    assert np.flatnonzero(mad_outliers(q, 2.7)).tolist() == [5]


def test_shot_detector_finds_hard_cuts_only():
    rng = np.random.default_rng(0)
    frames = []
    for shot, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        base = np.full((90, 160, 3), colour, np.uint8)
        for i in range(20):   # slow drift inside a shot
            frames.append(np.clip(base.astype(int) + i + rng.integers(0, 3, base.shape), 0, 255)
                          .astype(np.uint8))
    det = ShotDetector(threshold=27, min_shot_frames=5)
    arr = np.stack(frames)
    det.update(0, arr[:25])        # chunk boundaries do not matter
    det.update(25, arr[25:])
    assert det.boundaries == [0, 20, 40]
    assert det.shot_of(np.array([0, 19, 20, 59])).tolist() == [0, 0, 1, 2]
    with pytest.raises(ValueError):
        det.update(10, arr[:2])


@pytest.mark.parametrize("threaded", [False, True])
def test_run_chain_preserves_order_and_batches(threaded):
    double = lambda it: (x * 2 for x in it)            # noqa: E731

    def pairs(it):
        buf = []
        for x in it:
            buf.append(x)
            if len(buf) == 2:
                yield tuple(buf)
                buf = []
        if buf:
            yield tuple(buf)
    times = StageTimes()
    out = list(run_chain(range(5), [("double", double), ("pairs", pairs)], threaded=threaded,
                         times=times))
    assert out == [(0, 2), (4, 6), (8,)]
    assert set(times.busy) == {"double", "pairs"}


def test_run_chain_propagates_errors():
    def boom(it):
        for x in it:
            if x == 3:
                raise RuntimeError("stage failed")
            yield x
    with pytest.raises(RuntimeError, match="stage failed"):
        list(run_chain(range(10), [("boom", boom)], threaded=True))


def test_threaded_chain_overlaps_stages():
    """Two stages that each sleep (releasing the GIL) run concurrently when threaded."""
    def slow(name):
        def stage(it):
            for x in it:
                time.sleep(0.05)
                yield x
        return (name, stage)
    t0 = time.perf_counter()
    list(run_chain(range(8), [slow("a"), slow("b"), slow("c")], threaded=False))
    serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    list(run_chain(range(8), [slow("a"), slow("b"), slow("c")], threaded=True))
    threaded = time.perf_counter() - t0
    assert threaded < 0.7 * serial
    assert threading.active_count() < 20


# -- incremental linking and the streamed title ----------------------------------------------

def synthetic_faces(seed, frames=400, dim=8):
    """Walkers in shots of ~40 frames, present with gaps, plus one-frame false positives:
    -> (shot boundaries, columns of faces sorted by frame; detection order inside a frame
    shuffled)."""
    from harvest.vectors import l2_normalize
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(20, frames), size=frames // 40, replace=False))
    shot_of = lambda f: int(np.searchsorted(cuts, f, side="right"))  # noqa: E731
    people = l2_normalize(rng.normal(size=(6, dim)))
    rows = []
    for f in range(frames):
        faces = []
        for p in range(4):
            if rng.random() < 0.75:
                x = 30 + 120 * p + 0.5 * f % 40
                faces.append(([x, 40, x + 60, 100], people[(p + shot_of(f)) % 6]))
        if rng.random() < 0.1:
            x = rng.uniform(0, 500)
            faces.append(([x, 200, x + 30, 230], l2_normalize(rng.normal(size=dim))))
        for i in rng.permutation(len(faces)):
            box, who = faces[i]
            rows.append((f, shot_of(f), box, l2_normalize(who + 0.2 * rng.normal(size=dim))))
    f = np.array([r[0] for r in rows])
    n = len(rows)
    return [0] + cuts.tolist(), dict(
        frame_idx=f, shot=np.array([r[1] for r in rows], np.int32), pts=f / 25.0,
        boxes=np.array([r[2] for r in rows], np.float32),
        kps=rng.uniform(0, 100, (n, 5, 2)).astype(np.float32),
        scores=rng.uniform(0.5, 1, n).astype(np.float32),
        blur=rng.uniform(10, 300, n).astype(np.float32),
        emb=np.stack([r[3] for r in rows]).astype(np.float32))


def test_linker_fed_frame_by_frame_closes_tracks_early_and_reports_co_occurrence():
    from harvest.title.tracking import TrackLinker
    _, faces = synthetic_faces(0)
    f, boxes, shot = faces["frame_idx"], faces["boxes"], faces["shot"]
    linker = TrackLinker(0.3, 5)
    closed, max_open = [], 0
    for frame in np.unique(f):
        rows = np.flatnonzero(f == frame)
        closed += linker.push(int(frame), int(shot[rows[0]]), boxes[rows], rows.tolist())
        max_open = max(max_open, linker.n_open)
    n_before_end = len(closed)
    closed += linker.finish()
    assert n_before_end > 0.8 * len(closed) and max_open <= 10     # tracks close as we go
    tracks = sorted(closed, key=lambda t: t.track_id)
    assert [t.track_id for t in tracks] == list(range(len(tracks)))
    assert [np.asarray(t.faces).tolist() for t in tracks] == \
        [m.tolist() for m in link_tracks(f, boxes, shot, max_gap=5)]
    firsts = [t.faces[0] for t in tracks]          # ids in opening order
    assert firsts == sorted(firsts)
    for t in tracks:
        want = {o.track_id for o in tracks if o is not t
                and set(f[t.faces]) & set(f[o.faces])}
        assert t.partners == want
    with pytest.raises(ValueError, match="sorted by frame"):
        linker.push(0, 0, boxes[:1], [0])
        linker.push(0, 0, boxes[:1], [0])


def batch_reference(faces, config, fps):
    """The whole-title definition (what the pipeline computed before streaming): link every
    face at once, then quality/validity, cannot-link, tracklets and hard negatives on a TrackSet."""
    from miner_reference import TrackSet, adjacency, cannot_link_pairs, hard_negatives, tracklets
    from harvest.title.quality import face_quality, face_size, track_quality
    max_gap = max(config.det_stride, int(round(config.max_gap_seconds * fps)))
    members = link_tracks(faces["frame_idx"], faces["boxes"], faces["shot"],
                          iou_threshold=config.iou_threshold, max_gap=max_gap)
    fq = face_quality(faces["scores"], face_size(faces["boxes"]), faces["blur"])
    quality = np.array([track_quality(fq[m]) for m in members], np.float32)
    span = np.array([faces["frame_idx"][m[-1]] - faces["frame_idx"][m[0]] + config.det_stride
                     for m in members], np.float64)
    reasons = [None] * len(members)
    long_enough = span / fps >= config.min_track_seconds
    for t in np.flatnonzero(~long_enough):
        reasons[t] = "short"
    cand = np.flatnonzero(long_enough)
    for t in cand[mad_outliers(quality[cand], config.quality_mad_k)]:
        reasons[t] = "low_quality"
    valid = np.array([r is None for r in reasons])
    ts = TrackSet([faces["frame_idx"][m] for m in members], [faces["emb"][m] for m in members],
                  valid)
    links = adjacency(cannot_link_pairs(ts), len(members))
    tls = tracklets(ts, 3)
    anchors = np.stack([tl.vectors[0] if tl.vectors is not None else m
                        for tl, m in zip(tls, ts.mean_embeddings)])
    hn = hard_negatives(ts, links, anchors)
    return dict(members=members, quality=quality, reasons=reasons, links=links, hn=hn,
                tracklets=tls, means=ts.mean_embeddings)


@pytest.mark.parametrize("seed", range(3))
def test_streamed_title_equals_whole_title_definition(seed, tmp_path):
    import pyarrow.parquet as pq
    from harvest.config import HarvestConfig
    from harvest.title.tracks import FaceBatch
    from harvest.title.tracks import TitleTracker
    from harvest.dataset.validate import validate_table
    from harvest.title.tracks import crop_positions
    from harvest.dataset.shard import encode_crops
    bounds, faces = synthetic_faces(seed)
    config, fps = HarvestConfig(min_track_seconds=0.4, quality_mad_k=1.0, crops="sample",
                                crops_per_track=4), 25.0
    ref = batch_reference(faces, config, fps)
    ids = np.arange(len(faces["frame_idx"]))   # each face's "crop": 8x8, its id in the pixels
    faces["jpeg"] = np.array(encode_crops(np.broadcast_to(
        np.stack([ids % 256, ids // 256, ids * 0], -1)[:, None, None].astype(np.uint8),
        (len(ids), 8, 8, 3))), dtype=object)
    tracker = TitleTracker(config, fps, 8, str(tmp_path))
    tracker.spill.flush_bytes = 2000                  # many spill row groups
    f = faces["frame_idx"]
    starts = np.flatnonzero(np.r_[True, np.diff(f) != 0])
    cuts = list(starts[::7]) + [len(f)]               # batches of whole frames
    for a, b in zip(cuts[:-1], cuts[1:]):
        tracker.add(FaceBatch(**{k: v[a:b] for k, v in faces.items()}))
    meta = dict(title_id="t", source_uri="x", fps=fps, width=640, height=360, frame_count=400,
                backend="b", detector_file="", detector_sha256="", embedder_file="",
                embedder_sha256="", config_hash="c", shot_boundaries=bounds, crops="sample",
                crops_per_track=4)
    with tracker.finish() as tracks:
        path = tracks.write_shard("t", meta)
        table = pq.read_table(path)
        where = [tracks.spill.location[t] for t in range(len(tracks))]
        assert where[-1][0] > 3 and where != sorted(where)   # reordered across row groups
    assert not list(tmp_path.iterdir())               # scratch removed
    members = ref["members"]
    assert table.column("track_id").to_pylist() == list(range(len(members)))
    assert table.column("frame_idx").to_pylist() == [f[m].tolist() for m in members]
    np.testing.assert_array_equal(np.concatenate(table.column("timestamps").to_pylist()),
                                  np.concatenate([f[m] / 25.0 for m in members]))
    assert table.column("cannot_link").to_pylist() == ref["links"]
    assert table.column("hard_negative").to_pylist() == [h if h >= 0 else None for h in ref["hn"]]
    assert table.column("invalid_reason").to_pylist() == ref["reasons"]
    np.testing.assert_array_equal(table.column("track_quality").to_numpy(), ref["quality"])
    assert table.column("tracklet_members").to_pylist() == [t.members for t in ref["tracklets"]]
    np.testing.assert_array_equal(np.stack(table.column("mean_embedding").to_numpy(
        zero_copy_only=False)), ref["means"])
    # crops: the faces' own JPEGs, at the even sample + tracklet seeds of each track
    positions = [crop_positions(len(m), "sample", 4, t.seeds).tolist()
                 for m, t in zip(members, ref["tracklets"])]
    assert table.column("crop_positions").to_pylist() == positions
    assert table.column("crops").to_pylist() == [faces["jpeg"][m[p]].tolist()
                                                 for m, p in zip(members, positions)]
    assert max(map(len, members)) > 4 + 3 and max(map(len, positions)) > 4
    assert sum(map(len, ref["links"])) > 0 and ref["reasons"].count(None) > 3
    assert validate_table(table) == []


def test_streamed_shard_bytes_are_deterministic(tmp_path):
    from harvest.config import HarvestConfig
    from harvest.title.tracks import FaceBatch
    from harvest.title.tracks import TitleTracker
    bounds, faces = synthetic_faces(5, frames=150)
    meta = dict(title_id="t", source_uri="x", fps=25.0, width=640, height=360, frame_count=150,
                backend="b", detector_file="", detector_sha256="", embedder_file="",
                embedder_sha256="", config_hash="c", shot_boundaries=bounds)
    data = []
    for batch_frames in (3, 11):                     # different batching, same bytes
        tracker = TitleTracker(HarvestConfig(), 25.0, 8, str(tmp_path))
        f = faces["frame_idx"]
        starts = list(np.flatnonzero(np.r_[True, np.diff(f) != 0])[::batch_frames]) + [len(f)]
        for a, b in zip(starts[:-1], starts[1:]):
            tracker.add(FaceBatch(**{k: v[a:b] for k, v in faces.items()}))
        with tracker.finish() as tracks:
            data.append(open(tracks.write_shard("t", meta), "rb").read())
    assert data[0] == data[1]


def test_harvest_title_leaves_no_scratch_files(tmp_path):
    """A title's spill lives under RunOptions.scratch_dir until its tracks are closed, and is
    removed when the title fails mid-way."""
    from conftest import write_no_face_video
    from harvest.config import HarvestConfig, RunOptions
    from harvest.video.decode import DecodeError
    from harvest.faces.registry import load_backend
    from harvest.title.pipeline import harvest_title
    config = HarvestConfig(backend="dlib")
    backend = load_backend(config)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    video = write_no_face_video(str(tmp_path / "v.mp4"), frames=12)
    result = harvest_title(video, backend, config, RunOptions(scratch_dir=str(scratch)))
    assert len(result.tracks) == 0 and len(list(scratch.iterdir())) == 1
    with result.tracks:
        pass
    assert not list(scratch.iterdir())
    calls, detect = [], backend.detect

    def failing_detect(frames):                     # fault injection: fails on the 3rd batch
        calls.append(len(frames))
        if len(calls) == 3:
            raise DecodeError("injected")
        return detect(frames)
    backend.detect = failing_detect
    with pytest.raises(DecodeError, match="injected"):
        harvest_title(video, backend, config,
                      RunOptions(scratch_dir=str(scratch), chunk_frames=4, det_batch=4))
    assert len(calls) == 3 and not list(scratch.iterdir())


def test_interpolate_boxes_matches_a_per_frame_loop():
    from harvest.title.tracking import interpolate_boxes
    rng = np.random.default_rng(3)
    for _ in range(50):
        frames = np.cumsum(rng.integers(1, 6, rng.integers(1, 30))) + int(rng.integers(0, 100))
        boxes = rng.uniform(0, 100, (len(frames), 4))
        got_f, got_b = interpolate_boxes(frames, boxes)
        want_f, want_b = [], []
        for i in range(len(frames) - 1):
            for g in range(frames[i] + 1, frames[i + 1]):
                w = (g - frames[i]) / (frames[i + 1] - frames[i])
                want_f.append(g)
                want_b.append((1 - w) * boxes[i] + w * boxes[i + 1])
        assert got_f.tolist() == want_f
        np.testing.assert_allclose(got_b, np.reshape(want_b, (-1, 4)), rtol=1e-5, atol=1e-4)
