"""``harvest.faces.photo`` on a real harvest (crowd.mp4, SCRFD + MobileFaceNet; the session's
harvest of tests/test_card.py): a frame of a harvested title saved as a PNG photo gives the
embedding and box the shard holds for its largest face; a photo without a face, or a model pack
that is not the shards', is refused."""
from __future__ import annotations

import json
import os

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import FACE_PACK, SCRFD_2_5G, need
from test_card import harvest_output

from harvest.dataset import schema as S
from harvest.faces.photo import NoFace, PackMismatch, check_pack, embed_photo, pack_fingerprint


@pytest.fixture(scope="module")
def crowd(tmp_path_factory, ray_cluster):
    """(shard table, its metadata, the source video) of the harvested crowd title."""
    out = harvest_output(tmp_path_factory)
    recs = [json.loads(x) for x in open(os.path.join(out, "manifest.jsonl"))]
    (rec,) = [r for r in recs if r["title_id"].startswith("crowd-")]
    table = pq.read_table(os.path.join(out, "shards", f"{rec['title_id']}.parquet"))
    return table, S.read_metadata(table.schema), rec["source"].removeprefix("file://")


def frame_rgb(video: str, index: int) -> np.ndarray:
    """Frame ``index`` of a sequential PyAV decode (the harvest's frame numbering), RGB."""
    with av.open(video) as c:
        for k, f in enumerate(c.decode(video=0)):
            if k == index:
                return f.to_ndarray(format="rgb24")
    raise IndexError(index)


def iou(a, b) -> float:
    """IoU of two boxes (the platform's one definition, ``harvest.faces.boxes``)."""
    from harvest.faces.boxes import iou_matrix
    return float(iou_matrix(np.asarray([a], np.float64), np.asarray([b], np.float64))[0, 0])


def largest_face(table):
    """(frame, box, embedding) of the shard face that is the largest of its frame, taken from
    the frame that holds the largest face of the title."""
    faces = [(f, np.asarray(b), np.asarray(e, np.float32))
             for fr, bx, em in zip(table["frame_idx"].to_pylist(), table["boxes"].to_pylist(),
                                   table["embeddings"].to_pylist())
             for f, b, e in zip(fr, bx, em)]
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    frame = max(faces, key=lambda x: area(x[1]))[0]
    return max((x for x in faces if x[0] == frame), key=lambda x: area(x[1]))


def test_a_frame_as_a_photo_gives_the_shards_face(crowd, tmp_path):
    table, meta, video = crowd
    pack = need(FACE_PACK)
    frame, box, emb = largest_face(table)
    rgb = frame_rgb(video, frame)
    photo = str(tmp_path / "frame.png")
    assert cv2.imwrite(photo, np.ascontiguousarray(rgb[..., ::-1]))

    got, got_box = embed_photo(photo, pack, meta["backend"])
    assert got.dtype == np.float32 and got.shape == emb.shape
    assert abs(np.linalg.norm(got) - 1) < 1e-5
    cosine, overlap = float(got @ emb), iou(got_box, box)
    print(f"photo vs shard: cosine {cosine:.8f}, box IoU {overlap:.8f}, max |box diff| "
          f"{np.abs(got_box - box).max():.2e} px")
    assert cosine > 0.99 and overlap > 0.9
    # the same photo as bytes and as an array: the same face
    for same in (open(photo, "rb").read(), rgb):
        e2, b2 = embed_photo(same, pack, meta["backend"])
        assert float(e2 @ got) > 0.9999 and iou(b2, got_box) > 0.999


def test_a_photo_without_a_face_is_refused(crowd, tmp_path):
    pack = need(FACE_PACK)
    photo = str(tmp_path / "grey.png")
    assert cv2.imwrite(photo, np.full((480, 640, 3), 128, np.uint8))
    with pytest.raises(NoFace, match=f"no face found in {photo}"):
        embed_photo(photo, pack, crowd[1]["backend"])
    with pytest.raises(ValueError, match="not an image"):
        embed_photo(b"not an image at all", pack, crowd[1]["backend"])


def test_the_pack_must_be_the_shards(crowd, tmp_path):
    meta = crowd[1]
    pack = need(FACE_PACK)
    fp = pack_fingerprint(pack, meta["backend"])
    assert fp == {k: meta[k] for k in ("backend", "detector_sha256", "embedder_sha256")}
    check_pack(meta, pack)                         # the pack that made the shard: no error
    check_pack(meta, pack, meta["backend"])
    other = dict(meta, embedder_sha256="0" * 64)
    with pytest.raises(PackMismatch) as e:
        check_pack(other, pack)
    msg = str(e.value)
    assert "\n" not in msg and "0" * 64 in msg and meta["embedder_sha256"] in msg
    # another detector in a pack directory: the detector's sha256 differs
    alt = tmp_path / "pack"
    alt.mkdir()
    os.symlink(need(SCRFD_2_5G), alt / "scrfd_2.5g_bnkps.onnx")
    os.symlink(str(next(p for p in (FACE_PACK).iterdir() if "mobilefacenet" in p.name)),
               alt / "mobilefacenet_128.onnx")
    check_pack(meta, str(alt))                     # the same files elsewhere: the same pack
    small = tmp_path / "small"
    small.mkdir()
    os.symlink(need(FACE_PACK.parent / "scrfd_500m_bnkps.onnx"), small / "scrfd_500m_bnkps.onnx")
    os.symlink(str(alt / "mobilefacenet_128.onnx"), small / "mobilefacenet_128.onnx")
    with pytest.raises(PackMismatch, match=meta["detector_sha256"]):
        check_pack(meta, str(small))
