"""dlib backend mechanics: the 68-point shape reused from detect, and the backend's own
recommended stride (its descriptor, in torch, is tested against dlib's in test_dlib_resnet.py)."""
import numpy as np
import pytest

from conftest import CROWD, need
from harvest.cli import config_from, parse
from harvest.faces.dlib_backend import DlibBackend
from harvest.faces.registry import BACKENDS, default_det_stride


@pytest.fixture(scope="module")
def crowd_frames():
    from harvest.video.decode import ChunkedVideoReader
    with ChunkedVideoReader(need(CROWD), chunk_frames=4) as r:
        return list(next(iter(r.chunks())).frames[:3])


@pytest.fixture(scope="module")
def backend():
    return DlibBackend(threads=1)


@pytest.fixture(scope="module")
def aligned(crowd_frames, backend):
    """Per frame: (detections, aligned chips)."""
    dets = backend.detect(crowd_frames)
    out = [(d, backend.align(f, d)) for f, d in zip(crowd_frames, dets)]
    assert sum(len(d) for d, _ in out) >= 4
    return out


def test_align_reuses_the_shape_found_by_detect(crowd_frames, aligned):
    b = DlibBackend(threads=1)
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
