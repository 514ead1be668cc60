"""Face backends on real frames: batched inference equals the reference path, wiring of the registry."""
import os

import cv2
import numpy as np
import pytest

from conftest import CROWD, FACE_PACK, SHARED, need
from harvest.faces.base import FaceBackend
from harvest.config import HarvestConfig
from harvest.faces.registry import BACKENDS, choices, load_backend, model_files, resolve


@pytest.fixture(scope="module")
def crowd_frames():
    from harvest.video.decode import ChunkedVideoReader
    with ChunkedVideoReader(need(CROWD), chunk_frames=4) as r:
        return next(iter(r.chunks())).frames


@pytest.fixture(scope="module")
def insight():
    return load_backend(HarvestConfig(backend="insightface", models=need(FACE_PACK)), threads=2)


def test_registry_wiring():
    assert all(issubclass(cls, FaceBackend) and cls.name == name for name, cls in BACKENDS.items())
    assert resolve("auto", None)[0] in ("dlib", "insightface")
    assert resolve("auto", need(FACE_PACK)) == ("insightface", need(FACE_PACK))
    assert resolve("dlib", None) == ("dlib", None)
    with pytest.raises(ValueError):
        resolve("nope", None)
    with pytest.raises(ValueError):
        HarvestConfig(backend="nope")
    assert choices() == ["auto", *BACKENDS]


def test_registry_entries_own_their_rules(tmp_path, monkeypatch):
    """Each backend class carries its choice rule and files: auto prefers a found model pack,
    falls back to the embedded default without one, and locate() names the files build() loads."""
    monkeypatch.delenv("HARVEST_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))              # no ~/.insightface pack
    assert resolve("auto", None) == ("dlib", None)
    with pytest.raises(FileNotFoundError, match="needs --models"):
        resolve("insightface", None)
    files = model_files("insightface", need(FACE_PACK))
    assert [m.role for m in files] == ["detector", "embedder"]
    assert [os.path.basename(m.path) for m in files] == ["scrfd_2.5g_bnkps.onnx", "mobilefacenet_128.onnx"]
    monkeypatch.setenv("HARVEST_MODELS", need(FACE_PACK))
    assert resolve("auto", None) == ("insightface", need(FACE_PACK))


def test_detector_input_keeps_the_aspect_ratio(insight, crowd_frames):
    """16:9 frames go in as 640 x 384 (multiples of 32), not padded to 640 x 640, and find the
    same faces as the square input."""
    h, w = crowd_frames[0].shape[:2]
    assert insight.input_shape(h, w) == (384, 640)
    assert insight.input_shape(w, h) == (640, 384)
    rect = insight.detect([crowd_frames[0]])[0]
    square = insight.detector.detect(cv2.cvtColor(crowd_frames[0], cv2.COLOR_RGB2BGR),
                                     input_size=(640, 640))[0]
    assert abs(len(rect) - len(square)) <= max(1, 0.05 * len(square))
    from harvest.faces.boxes import iou_matrix
    best = iou_matrix(rect.boxes, square[:, :4]).max(axis=1)
    assert np.mean(best > 0.9) >= 0.9


def test_batched_alignment_equals_insightface_norm_crop(crowd_frames, insight):
    from insightface.utils.face_align import estimate_norm, norm_crop
    from harvest.faces.align import similarity_transforms
    dets = insight.detect([crowd_frames[0]])[0]
    mats = similarity_transforms(dets.kps, 112)
    ref = np.stack([estimate_norm(k, 112) for k in dets.kps])
    np.testing.assert_allclose(mats, ref, atol=2e-3)
    crops = insight.align(crowd_frames[0], dets)
    ref_crops = np.stack([norm_crop(crowd_frames[0], k) for k in dets.kps])
    assert np.abs(crops.astype(int) - ref_crops).max() <= 1


def test_batched_scrfd_equals_insightface_single_image(insight, crowd_frames):
    batched = insight.detect(list(crowd_frames))
    det = insight.detector
    ih, iw = insight.input_shape(*crowd_frames[0].shape[:2])
    det.prepare(-1, input_size=(iw, ih), det_thresh=0.5)
    for frame, got in zip(crowd_frames, batched):
        ref, kps = det.detect(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), input_size=(iw, ih))
        assert len(ref) == len(got) >= 5                   # a crowd: many faces
        order_ref, order_got = np.argsort(ref[:, 0]), np.argsort(got.boxes[:, 0])
        np.testing.assert_allclose(got.boxes[order_got], ref[order_ref, :4], atol=0.05)
        np.testing.assert_allclose(got.kps[order_got], kps[order_ref], atol=0.05)


def test_batched_embedding_equals_one_by_one(insight, crowd_frames):
    dets = insight.detect([crowd_frames[0]])[0]
    crops = insight.align(crowd_frames[0], dets)
    assert crops.shape == (len(dets), 112, 112, 3)
    batch = insight.embed(crops)
    single = np.concatenate([insight.embed(crops[i:i + 1]) for i in range(len(crops))])
    np.testing.assert_allclose(batch, single, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert batch.shape[1] == insight.embedding_dim == 128


def test_same_face_in_next_frame_is_nearest(insight, crowd_frames):
    a, b = insight.detect([crowd_frames[0], crowd_frames[1]])
    ea = insight.embed(insight.align(crowd_frames[0], a))
    eb = insight.embed(insight.align(crowd_frames[1], b))
    from harvest.faces.boxes import iou_matrix
    iou = iou_matrix(a.boxes, b.boxes)
    sims = ea @ eb.T
    pairs = [(i, int(np.argmax(iou[i]))) for i in range(len(a)) if iou[i].max() > 0.7]
    assert len(pairs) >= 4
    assert np.mean([sims[i, j] for i, j in pairs]) > 0.7
    assert np.mean([sims[i, j] for i, j in pairs]) > np.mean(sims) + 0.3


def test_fixed_batch_detector_falls_back_to_a_loop(tmp_path, crowd_frames):
    """scrfd_500m declares batch 1 and a 640x640 input: the backend loops and keeps the size."""
    need(SHARED / "models" / "scrfd_500m_bnkps.onnx")
    os.symlink(SHARED / "models" / "scrfd_500m_bnkps.onnx", tmp_path / "det.onnx")
    os.symlink(FACE_PACK / "mobilefacenet_128.onnx", tmp_path / "rec.onnx")
    b = load_backend(HarvestConfig(backend="insightface", models=str(tmp_path), det_size=320))
    assert b.det_size == 640
    dets = b.detect(list(crowd_frames[:3]))
    assert len(dets) == 3 and all(len(d) >= 3 for d in dets)


def test_dlib_backend_detects_and_embeds(crowd_frames):
    b = load_backend(HarvestConfig(backend="dlib"))
    dets = b.detect([crowd_frames[0]])[0]
    assert len(dets) >= 1 and dets.kps.shape == (len(dets), 5, 2)
    assert np.all((dets.scores >= 0.5) & (dets.scores <= 1))
    x1, y1, x2, y2 = dets.boxes[0]                       # eyes inside the box, left eye left
    assert x1 <= dets.kps[0, 0, 0] < dets.kps[0, 1, 0] <= x2
    emb = b.embed(b.align(crowd_frames[0], dets))
    assert emb.shape == (len(dets), 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert {m.role for m in b.model_files} == {"detector", "embedder"}
    assert all(os.path.exists(m.path) for m in b.model_files)


def test_suppress_nested_drops_a_larger_window_around_the_same_head():
    """The dlib demo's duplicate: HOG fires on the face (62 px) and, lower, on a 90 px window
    around the same head (IoU 0.28, face box 2/3 inside): containment suppression keeps the best
    one; disjoint and barely touching faces are all kept."""
    from harvest.faces.base import suppress_nested
    face, window = [494, 87, 557, 149], [464, 106, 554, 196]
    other, touching = [100, 100, 160, 160], [155, 100, 215, 160]
    boxes = np.array([face, window, other, touching], np.float32)
    assert suppress_nested(boxes, np.array([0.9, 0.51, 0.8, 0.7])).tolist() == [True, False, True, True]
    assert suppress_nested(boxes, np.array([0.5, 0.9, 0.8, 0.7])).tolist() == [False, True, True, True]
    rng = np.random.default_rng(0)                    # against a brute-force pairwise rule
    for _ in range(50):
        xy = rng.uniform(0, 200, (12, 2))
        b = np.c_[xy, xy + rng.uniform(10, 80, (12, 2))]
        s = rng.random(12)
        keep = suppress_nested(b, s)
        for i in np.flatnonzero(keep):
            for j in np.flatnonzero(keep):
                if i < j:
                    w = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
                    h = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
                    small = min(np.prod(b[i, 2:] - b[i, :2]), np.prod(b[j, 2:] - b[j, :2]))
                    assert max(w, 0) * max(h, 0) <= 0.5 * small
        assert keep[np.argmax(s)]


def test_a_cuda_provider_that_did_not_load_fails_loudly():
    """onnxruntime-gpu lists CUDAExecutionProvider yet runs a session on CPU when cuDNN is
    missing: the backend must refuse, not harvest a GPU node at CPU speed."""
    import pytest

    from harvest.faces.insightface_backend import check_providers
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    check_providers(cuda, {"detector": cuda, "recogniser": cuda})
    check_providers(["CPUExecutionProvider"], {"detector": ["CPUExecutionProvider"]})
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider for the recogniser"):
        check_providers(cuda, {"detector": cuda, "recogniser": ["CPUExecutionProvider"]})
