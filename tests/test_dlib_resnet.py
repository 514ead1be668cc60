"""dlib's ResNet face descriptor in torch (harvest.faces.dlib_resnet): the weights parsed from
dlib's own .dat file give the same 128-d descriptors as dlib's ``compute_face_descriptor`` on the
same chips (real faces aligned by the dlib backend, and random chips), batched or one by one."""
import os

import cv2
import numpy as np
import pytest

from conftest import CROWD, need
from harvest.faces.dlib_backend import DlibBackend, dlib_model_dir
from harvest.faces.dlib_resnet import (DlibFormatError, compute_descriptors, dlib_resnet,
                                       parse_dlib_net, read_dlib_resnet)

MAX_ABS = 1e-4          # measured: ~5e-7 (descriptor norms ~1.3)


@pytest.fixture(scope="module")
def backend():
    # one torch thread: on a loaded 2-core machine, 2 OpenMP threads spin on batch-1 calls
    return DlibBackend(threads=1)


@pytest.fixture(scope="module")
def chips(backend):
    """Aligned 150x150 chips: the sample identities' heads, two crowd frames' faces, 3 random."""
    from harvest.video.decode import ChunkedVideoReader
    from harvest.samples import load_identities

    out = []
    for head, _ in load_identities():
        rgb = np.ascontiguousarray(cv2.cvtColor(head, cv2.COLOR_BGR2RGB))
        out.append(backend.align(rgb, backend.detect([rgb])[0]))
    with ChunkedVideoReader(need(CROWD), chunk_frames=4) as r:
        frames = list(next(iter(r.chunks())).frames[:2])
    for f, d in zip(frames, backend.detect(frames)):
        out.append(backend.align(f, d))
    out.append(np.random.default_rng(0).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8))
    chips = np.concatenate(out)
    assert len(chips) >= 10 + 3
    return chips


def test_torch_descriptors_equal_dlib(backend, chips):
    ref = np.array(backend.facerec.compute_face_descriptor(list(chips)))
    got = compute_descriptors(backend.resnet, chips)
    diff = np.abs(got - ref).max()
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    print(f"max abs diff {diff:.2e}, min cosine {cos.min():.9f}, over {len(chips)} chips")
    assert diff <= MAX_ABS
    assert cos.min() > 0.9999
    # the backend's unit-norm embeddings are dlib's descriptors normalised
    emb = backend.embed(chips)
    np.testing.assert_allclose(emb, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)


def test_batch_equals_one_by_one(backend, chips):
    batched = compute_descriptors(backend.resnet, chips, batch=64)
    some = np.r_[0:4, len(chips) - 4:len(chips)]          # identities, crowd and random chips
    single = np.concatenate([compute_descriptors(backend.resnet, chips[i][None], batch=1)
                             for i in some])
    np.testing.assert_allclose(batched[some], single, atol=1e-5)
    np.testing.assert_allclose(compute_descriptors(backend.resnet, chips, batch=4), batched, atol=1e-5)


def test_parsed_once_and_layout():
    path = os.path.join(dlib_model_dir(), "dlib_face_recognition_resnet_model_v1.dat")
    state = read_dlib_resnet(path)
    assert read_dlib_resnet(path) is state and dlib_resnet(path) is dlib_resnet(path)
    assert state["input"]["size"] == (150, 150)
    np.testing.assert_allclose(state["input"]["mean"], (122.782, 117.001, 104.298), atol=1e-4)
    kinds = [layer["type"] for layer in state["layers"]]
    assert kinds.count("con") == 29 and kinds.count("add_prev") == 14
    assert state["layers"][-1]["weight"].shape == (256, 128) and state["layers"][-1]["bias"] is None
    with open(path, "rb") as f:
        data = f.read(4096)
    with pytest.raises((DlibFormatError, IndexError, ValueError)):
        parse_dlib_net(data)                                  # truncated file: loud


def test_chip_shape_checked(backend):
    with pytest.raises(ValueError, match="chips must be"):
        compute_descriptors(backend.resnet, np.zeros((1, 112, 112, 3), np.uint8))
