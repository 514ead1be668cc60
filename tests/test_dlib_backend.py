"""dlib backend mechanics: descriptors in a child process (same values, cleaned up, loud when it
dies), the 68-point shape reused from detect, and the backend's own recommended stride."""
import gc
import os
import signal
import time

import numpy as np
import pytest

from conftest import CROWD, need
from harvest.cli import config_from, parse
from harvest.faces.dlib_backend import DlibBackend
from harvest.faces.dlib_descriptor import ChildDied
from harvest.faces.registry import BACKENDS, default_det_stride


@pytest.fixture(scope="module")
def crowd_frames():
    from harvest.decode import ChunkedVideoReader
    with ChunkedVideoReader(need(CROWD), chunk_frames=4) as r:
        return list(next(iter(r.chunks())).frames[:3])


@pytest.fixture(scope="module")
def in_process():
    return DlibBackend(descriptor_process=False)


@pytest.fixture(scope="module")
def aligned(crowd_frames, in_process):
    """Per frame: (detections, aligned chips), from the in-process backend."""
    dets = in_process.detect(crowd_frames)
    out = [(d, in_process.align(f, d)) for f, d in zip(crowd_frames, dets)]
    assert sum(len(d) for d, _ in out) >= 4
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read()
    except FileNotFoundError:
        return False


def _gone(pid: int, seconds: float = 10.0) -> bool:
    end = time.time() + seconds
    while time.time() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_child_process_embeddings_equal_in_process(crowd_frames, in_process, aligned):
    """align hands each frame's chips to the child, embed collects them: same detections,
    same chips, same embeddings as the in-process descriptor (also for chips align never saw,
    in another order, and after a frame aligned but never embedded)."""
    b = DlibBackend(descriptor_processes=2)                # frames spread over two children
    try:
        dets = b.detect(crowd_frames)
        chips = [b.align(f, d) for f, d in zip(crowd_frames, dets)]
        for (d_ref, c_ref), d, c in zip(aligned, dets, chips):
            np.testing.assert_array_equal(d.boxes, d_ref.boxes)
            np.testing.assert_array_equal(c, c_ref)
        ref = in_process.embed(np.concatenate([c for _, c in aligned]))
        got = b.embed(np.concatenate(chips))
        np.testing.assert_allclose(got, ref, atol=1e-5)
        assert not b._ahead and not b._job_left            # every handed-over chip was taken
        np.testing.assert_allclose(b.embed(np.concatenate(chips)[::-1]), ref[::-1], atol=1e-5)
        b.align(crowd_frames[0], dets[0])                   # aligned, never embedded
        c1 = b.align(crowd_frames[1], dets[1])
        n0 = len(dets[0])
        np.testing.assert_allclose(b.embed(c1), ref[n0:n0 + len(c1)], atol=1e-5)
        assert not b._ahead and not b._job_left
    finally:
        b.close()


def test_descriptor_child_is_cleaned_up_and_fails_loudly(aligned):
    b = DlibBackend(descriptor_processes=2)
    pids = b.descriptor_pids
    assert len(pids) == 2 and all(map(_alive, pids))
    b.close()
    assert all(_gone(p) for p in pids)

    b = DlibBackend(descriptor_processes=1)                # dropped without close()
    (pid,) = b.descriptor_pids
    del b
    gc.collect()
    assert _gone(pid)

    b = DlibBackend(descriptor_processes=2)
    try:
        chips = aligned[0][1]
        pid, other = b.descriptor_pids
        os.kill(pid, signal.SIGKILL)
        assert _gone(pid)
        with pytest.raises(ChildDied, match=rf"process {pid} died.*exit code -9"):
            b.embed(chips)
        emb = b.embed(chips)                               # the next call starts a new child
        assert pid not in b.descriptor_pids and other in b.descriptor_pids
        assert emb.shape == (len(chips), 128)
    finally:
        b.close()


def test_align_reuses_the_shape_found_by_detect(crowd_frames, aligned):
    b = DlibBackend(descriptor_process=False)
    calls = []
    predictor = b.shapes
    b.shapes = lambda img, rect: calls.append(rect) or predictor(img, rect)
    dets = b.detect(crowd_frames)
    n = len(calls)
    assert n >= sum(len(d) for d in dets)              # (also boxes under the score cut)
    for f, d, (_, ref) in zip(crowd_frames, dets, aligned):
        np.testing.assert_array_equal(b.align(f, d), ref)
    assert len(calls) == n                                 # no second 68-point pass
    np.testing.assert_array_equal(b.align(crowd_frames[0].copy(), dets[0]), aligned[0][1])
    assert len(calls) == n + len(dets[0])                  # another frame object: recomputed


def test_backend_recommended_stride_is_the_run_default(tmp_path):
    def stride(*extra):
        args = parse(["run", "--input", str(tmp_path), "--output", str(tmp_path / "o"), *extra])
        return config_from(args).det_stride

    assert DlibBackend.default_det_stride == 4
    assert default_det_stride("dlib") == 4
    assert stride("--backend", "dlib") == 4
    assert stride("--backend", "dlib", "--det-stride", "2") == 2
    assert stride("--backend", "dlib", "--det-stride", "1") == 1
    for name, cls in BACKENDS.items():
        assert default_det_stride(name) == cls.default_det_stride
    auto = stride()                                        # auto: the stride of what it resolves to
    from harvest.faces.registry import resolve
    assert auto == BACKENDS[resolve("auto", None)[0]].default_det_stride
