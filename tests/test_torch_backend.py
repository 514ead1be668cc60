"""The torch backend (ONNX run as torch modules by harvest.faces.onnx_torch, device-agnostic) against the onnxruntime
backend on real frames: same detections, same embeddings, same tracks. Runs on CPU here; on a GPU
node the same code runs on CUDA in fp16."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import CROWD, FACE_PACK, need
from harvest.config import HarvestConfig
from harvest.faces.registry import load_backend, resolve
from harvest.faces.boxes import iou_matrix



def test_onnx_module_matches_onnxruntime_on_every_shared_model():
    """harvest.faces.onnx_torch runs each shared ONNX file like onnxruntime (random inputs)."""
    import onnxruntime
    import torch
    from conftest import SHARED
    from harvest.faces.onnx_torch import OnnxModule
    rng = np.random.default_rng(0)
    for path, shape in ((FACE_PACK / "scrfd_2.5g_bnkps.onnx", (2, 3, 384, 640)),
                        (FACE_PACK / "mobilefacenet_128.onnx", (8, 3, 112, 112)),
                        (SHARED / "models" / "scrfd_500m_bnkps.onnx", (1, 3, 640, 640))):
        sess = onnxruntime.InferenceSession(need(path), providers=["CPUExecutionProvider"])
        x = rng.standard_normal(shape).astype(np.float32)
        ref = sess.run(None, {sess.get_inputs()[0].name: x})
        module = OnnxModule(str(path)).eval()
        assert any(p.requires_grad for p in module.parameters())          # trainable weights
        with torch.no_grad():
            got = module(torch.from_numpy(x))
        got = got if isinstance(got, list) else [got]
        assert len(got) == len(ref)
        for r, g in zip(ref, got):
            assert r.shape == tuple(g.shape)
            np.testing.assert_allclose(g.numpy(), r, atol=1e-4)


@pytest.fixture(scope="module")
def backends():
    ort = load_backend(HarvestConfig(backend="insightface", models=need(FACE_PACK)), threads=2)
    tb = load_backend(HarvestConfig(backend="torch", models=need(FACE_PACK)), threads=2)
    return ort, tb


@pytest.fixture(scope="module")
def crowd_every_5th():
    from harvest.video.decode import ChunkedVideoReader
    with ChunkedVideoReader(need(CROWD), chunk_frames=35) as r:
        return [f for c in r.chunks() for i, f in enumerate(c.frames) if (c.start + i) % 5 == 0]


def test_same_detections_as_onnxruntime(backends, crowd_every_5th):
    ort, tb = backends
    assert tb.device.type in ("cpu", "cuda") and tb.embedding_dim == ort.embedding_dim == 128
    n_ort = n_torch = matched = 0
    for s in range(0, len(crowd_every_5th), 8):
        frames = crowd_every_5th[s:s + 8]
        for a, b in zip(ort.detect(frames), tb.detect(frames)):
            n_ort, n_torch = n_ort + len(a), n_torch + len(b)
            if len(a) and len(b):
                matched += int((iou_matrix(a.boxes, b.boxes).max(axis=1) > 0.9).sum())
    assert n_ort >= 100                                   # a crowd: many faces
    assert abs(n_torch - n_ort) <= 0.02 * n_ort
    assert matched >= 0.98 * n_ort


def test_same_embeddings_as_onnxruntime(backends, crowd_every_5th):
    ort, tb = backends
    frame = crowd_every_5th[0]
    dets = ort.detect([frame])[0]
    e_ort = ort.embed(ort.align(frame, dets))
    e_torch = tb.embed(tb.align(frame, dets))            # torch warp + torch network
    assert len(dets) >= 5
    assert np.min(np.sum(e_ort * e_torch, axis=1)) > 0.99
    crops_ort, crops_torch = ort.align(frame, dets), tb.align(frame, dets)
    assert np.abs(crops_ort.astype(int) - crops_torch).max() <= 2   # one batched grid_sample warp


def test_reduced_precision_agrees_with_fp32(backends, crowd_every_5th):
    """The GPU runs the networks in fp16; CPU kernels exist for bfloat16 (8 significant bits,
    coarser than fp16's 11), so the same conversion runs here in bf16 against fp32 on real 1080p
    frames, with the thresholds of the GPU acceptance (``harvest.faces.agreement``): boxes
    matched at IoU > 0.9, counts within 2 %, each matched face's embedding cosine > 0.99. It
    holds because the output layers and (bf16) the biases stay fp32
    (``OnnxModule.reduce_precision``; with everything in bf16 a face fell to cosine 0.95)."""
    import torch
    from harvest.faces.agreement import compare
    from harvest.faces.torch_backend import TorchFaceBackend
    _, fp32 = backends
    bf16 = TorchFaceBackend(need(FACE_PACK), threads=2, precision="bf16")
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert {p.dtype for p in bf16.detector.parameters()} == {torch.bfloat16, torch.float32}
    agreement = compare(fp32, bf16, crowd_every_5th[::3])
    assert agreement.ref_faces >= 40 and agreement.matched >= 40
    assert agreement.ok, agreement.failures()


def test_agreement_matches_faces_one_to_one():
    from harvest.faces.agreement import Agreement, match_boxes
    ref = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32)
    cand = np.array([[20.2, 0, 30.2, 10], [0, 0, 10, 10], [0.1, 0, 10.1, 10]], np.float32)
    assert sorted((i, j) for i, j, _ in match_boxes(ref, cand)) == [(0, 1), (1, 0)]
    broken = Agreement(frames=1, ref_faces=100, cand_faces=103, matched=97, min_iou=0.95,
                       min_cosine=0.98, mean_cosine=0.995)
    assert len(broken.failures()) == 3 and not broken.ok


def test_nms_equals_insightface_reference():
    import torch
    from insightface.model_zoo.scrfd import SCRFD
    from harvest.faces.torch_backend import _nms
    rng = np.random.default_rng(0)
    for _ in range(20):
        xy = rng.uniform(0, 200, (60, 2))
        wh = rng.uniform(5, 60, (60, 2))
        boxes = np.hstack([xy, xy + wh]).astype(np.float32)
        scores = rng.uniform(0.5, 1, 60).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        ref = SCRFD.nms(type("R", (), {"nms_thresh": 0.4})(), np.hstack([boxes, scores[:, None]]))
        got = order[_nms(torch.from_numpy(boxes[order]), 0.4).numpy()]
        assert list(got) == list(ref)


def test_padded_batch_nms_equals_one_image_at_a_time():
    """Several images' candidates at once (padded, a few NMS cells per group) keep exactly what
    the per-image greedy sweep keeps."""
    import torch
    from harvest.faces import torch_backend
    rng = np.random.default_rng(1)
    n, k = 7, 50
    counts = rng.integers(0, k + 1, n)
    boxes = np.zeros((n, k, 4), np.float32)
    valid = np.zeros((n, k), bool)
    for i, c in enumerate(counts):
        xy = rng.uniform(0, 150, (c, 2))
        boxes[i, :c] = np.hstack([xy, xy + rng.uniform(5, 60, (c, 2))])
        valid[i, :c] = True
    old = torch_backend._NMS_CELLS
    try:
        for cells in (old, 3 * k * k):                       # one group; groups of 3 images
            torch_backend._NMS_CELLS = cells
            alive = torch_backend._nms_padded(torch.from_numpy(boxes), torch.from_numpy(valid), 0.4)
            for i, c in enumerate(counts):
                one = torch_backend._nms(torch.from_numpy(boxes[i, :c]), 0.4).numpy()
                assert list(np.flatnonzero(alive[i])) == list(one)
    finally:
        torch_backend._NMS_CELLS = old


def test_detections_do_not_depend_on_the_batch(backends, crowd_every_5th):
    """A frame's detections are the same alone and inside a batch of 8 (decoding and NMS run for
    the whole batch at once)."""
    _, tb = backends
    frames = crowd_every_5th[:8]
    together = tb.detect(frames)
    for frame, b in zip(frames, together):
        (a,) = tb.detect([frame])
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.kps, b.kps, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_auto_never_picks_torch_without_cuda():
    import torch
    if torch.cuda.is_available():
        pytest.skip("CUDA present: auto picks torch here by design")
    assert resolve("auto", need(FACE_PACK))[0] == "insightface"
    assert resolve("torch", need(FACE_PACK)) == ("torch", need(FACE_PACK))


def test_harvest_gives_the_same_tracks_with_either_backend(tmp_path):
    """The whole per-title pipeline (a worker, no Ray) with each backend: the same tracks."""
    import pyarrow.parquet as pq
    from harvest.faces.agreement import match_tracks, read_tracks
    from harvest.run.sources import list_sources
    from harvest.run.worker import TitleWorker
    from harvest.dataset.schema import read_metadata
    source = list_sources(need(CROWD))[0]
    tracks, meta = {}, {}
    for name in ("insightface", "torch"):
        config = HarvestConfig(backend=name, models=need(FACE_PACK), det_stride=3)
        record = TitleWorker(str(tmp_path / name), config, threads=2).process(source)
        assert record["status"] == "done", record["error"]
        meta[name] = read_metadata(pq.read_schema(record["shard_path"]))
        tracks[name] = read_tracks(record["shard_path"])
    a, b = tracks["insightface"], tracks["torch"]
    # the torch backend takes its frames as tensors on its device (here uploaded by the CPU
    # reader), and finds the same shots from them as OpenCV from numpy frames
    assert meta["insightface"]["decoder"] == meta["torch"]["decoder"] == "pyav"
    assert meta["torch"]["decoder_fallback"] == ""
    assert meta["torch"]["shot_boundaries"] == meta["insightface"]["shot_boundaries"]
    assert len(a) >= 10
    assert abs(len(a) - len(b)) <= 1
    same = match_tracks(a, b)           # same frames, and the same face on every frame
    assert same >= 0.9 * len(a), f"{same} of {len(a)} tracks identical"
