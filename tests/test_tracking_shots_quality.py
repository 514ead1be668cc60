"""Tracking, shot detection, quality and the stage runner on controlled inputs."""
import threading
import time

import numpy as np
import pytest

from harvest.quality import mad_outliers
from harvest.shots import ShotDetector
from harvest.stages import StageTimes, run_chain
from harvest.tracking import iou_matrix, link_tracks


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
