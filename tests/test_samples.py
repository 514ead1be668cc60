"""Tests of harvest.samples: labelled synthetic clips made of the faces insightface ships."""
import importlib.util
import itertools
import os
import sys

import numpy as np
import pytest

import cv2  # noqa: F401  (before decord: decord's zlib breaks OpenCV's PNG decoder otherwise)
import decord
import dlib

from harvest import samples

from conftest import SCRFD_2_5G, need


def iou(a, b) -> float:
    """IoU of two boxes (the platform's one definition, ``harvest.faces.boxes``)."""
    from harvest.faces.boxes import iou_matrix
    return float(iou_matrix(np.asarray([a], np.float64), np.asarray([b], np.float64))[0, 0])


@pytest.fixture(scope="module")
def sample_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    return str(out), samples.make_sample_set(str(out), n_titles=2, seed=0)


@pytest.fixture(scope="module")
def clip(sample_set):
    path, truth = sample_set[1][0]
    return path, truth, decord.VideoReader(path)


def _by_frame(truth):
    rows = {}
    for r in truth.boxes:
        rows.setdefault(r[0], []).append(r)
    return rows


@pytest.fixture(scope="module")
def face_rec():
    """(describe(rgb, xyxy) -> (128,) dlib descriptor, (K, 128) descriptors of the identities)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        pytest.skip("face_recognition_models not installed")
    models = os.path.join(spec.submodule_search_locations[0], "models")
    sp = dlib.shape_predictor(os.path.join(models, "shape_predictor_5_face_landmarks.dat"))
    rec = dlib.face_recognition_model_v1(os.path.join(models, "dlib_face_recognition_resnet_model_v1.dat"))

    def describe(rgb, box):
        rect = dlib.rectangle(*(int(round(v)) for v in (box[0], box[1], box[2] - 1, box[3] - 1)))
        return np.array(rec.compute_face_descriptor(rgb, sp(rgb, rect)))
    heads = [describe(np.ascontiguousarray(h[:, :, ::-1]), b) for h, b in samples.load_identities()]
    return describe, np.array(heads)


def test_identities_found_and_distinct(face_rec):
    ids = samples.load_identities()
    assert 6 <= len(ids) <= 7
    for head, (x1, y1, x2, y2) in ids:
        assert head.dtype == np.uint8 and head.ndim == 3
        assert abs(head.shape[0] / head.shape[1] - 150 / 110) < 0.02
        assert 0 <= x1 < x2 <= head.shape[1] and 0 <= y1 < y2 <= head.shape[0]
        assert 1.6 < head.shape[1] / (x2 - x1) < 2.0
    desc = face_rec[1]
    dist = np.linalg.norm(desc[:, None] - desc[None], axis=2)
    # dlib's same-person threshold is 0.6: every pair must be two different people
    assert dist[np.triu_indices(len(ids), 1)].min() > 0.6


def test_truth_identity_matches_pixels(clip, face_rec):
    path, truth, vr = clip
    describe, heads = face_rec
    by_frame = _by_frame(truth)
    n = ok = 0
    for f in range(4, truth.frame_count, 16):
        rgb = vr[f].asnumpy()
        for row in by_frame[f]:
            n += 1
            ok += f"id{np.linalg.norm(heads - describe(rgb, row[1:5]), axis=1).argmin()}" == row[5]
    assert n >= 15 and ok / n >= 0.9, f"{ok}/{n}"


def test_default_plan_has_recurring_and_cooccurring_identities():
    for seed in range(5):
        shots = samples.default_shots(seed)
        assert 4 <= len(shots) <= 5
        assert all(1 <= len(s.identities) <= 3 and 30 <= s.n_frames <= 40 for s in shots)
        assert all(len(set(s.identities)) == len(s.identities) for s in shots)
        assert sum(len(s.identities) >= 2 for s in shots) >= 2
        counts = {}
        for s in shots:
            for i in s.identities:
                counts[i] = counts.get(i, 0) + 1
        assert max(counts.values()) >= 2
    assert samples.default_shots(3) == samples.default_shots(3)
    assert samples.default_shots(0) != samples.default_shots(1)


def test_clip_decodes_to_truth_frame_count(clip):
    path, truth, vr = clip
    assert len(vr) == truth.frame_count
    assert 140 <= truth.frame_count <= 200
    assert vr[0].shape == (truth.height, truth.width, 3) == (360, 640, 3)
    assert abs(vr.get_avg_fps() - truth.fps) < 1e-3
    assert truth.shot_boundaries[0] == 0 and len(truth.shot_boundaries) >= 4
    assert all(b < c for b, c in zip(truth.shot_boundaries, truth.shot_boundaries[1:]))


def test_cuts_are_where_truth_says(clip):
    path, truth, vr = clip
    frames = vr.get_batch(list(range(len(vr)))).asnumpy().astype(np.int16)
    diff = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # diff[i]: frame i -> i+1
    cuts = [b - 1 for b in truth.shot_boundaries[1:]]
    assert np.flatnonzero(diff > 20).tolist() == cuts
    assert diff[cuts].min() > 5 * np.delete(diff, cuts).max()


def test_boxes_inside_frame_and_disjoint(sample_set):
    for _, truth in sample_set[1]:
        by_frame = _by_frame(truth)
        assert sorted(by_frame) == list(range(truth.frame_count))  # every frame has faces
        starts = truth.shot_boundaries + [truth.frame_count]
        for s, (a, b) in enumerate(zip(starts, starts[1:])):
            ids = {tuple(sorted(r[5] for r in by_frame[f])) for f in range(a, b)}
            assert len(ids) == 1, f"shot {s} changes identities"
        for f, rows in by_frame.items():
            for _, x1, y1, x2, y2, _ in rows:
                assert 0 <= x1 < x2 <= truth.width and 0 <= y1 < y2 <= truth.height
                assert 45 < x2 - x1 < 80
            for r, q in itertools.combinations(rows, 2):
                assert r[5] != q[5]
                assert iou(r[1:5], q[1:5]) == 0.0
        # faces move smoothly: <= 5 px per frame within a shot
        per_id = {}
        for f, x1, y1, x2, y2, ident in truth.boxes:
            per_id.setdefault(ident, []).append((f, x1, y1))
        for ident, rows in per_id.items():
            for (f0, ax, ay), (f1, bx, by) in zip(rows, rows[1:]):
                if f1 == f0 + 1 and f1 not in truth.shot_boundaries:
                    assert abs(bx - ax) <= 5 and abs(by - ay) <= 5


def test_dlib_detects_truth_faces(clip):
    path, truth, vr = clip
    det = dlib.get_frontal_face_detector()
    by_frame = _by_frame(truth)
    n = hit = 0
    for f in range(0, truth.frame_count, 12):
        found = [(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r in det(vr[f].asnumpy(), 1)]
        for row in by_frame[f]:
            n += 1
            hit += max((iou(row[1:5], d) for d in found), default=0.0) > 0.5
    assert n >= 20 and hit / n >= 0.85, f"{hit}/{n}"


def test_scrfd_detects_truth_faces(clip):
    import insightface
    path, truth, vr = clip
    model = insightface.model_zoo.get_model(need(SCRFD_2_5G), providers=["CPUExecutionProvider"])
    model.prepare(ctx_id=-1, input_size=(640, 640))
    by_frame = _by_frame(truth)
    n = hit = 0
    for f in range(3, truth.frame_count, 12):
        boxes, _ = model.detect(np.ascontiguousarray(vr[f].asnumpy()[:, :, ::-1]))
        for row in by_frame[f]:
            n += 1
            hit += max((iou(row[1:5], b[:4]) for b in boxes), default=0.0) > 0.5
    assert n >= 20 and hit / n >= 0.9, f"{hit}/{n}"


def test_labels_csv_round_trips(sample_set, tmp_path):
    out, items = sample_set
    assert sorted(os.listdir(out)) == ["labels.csv", "photos", "title_0.mp4", "title_1.mp4"]
    ids = sorted({r[5] for _, t in items for r in t.boxes})
    from harvest.samples import load_identities
    photos = sorted(os.listdir(os.path.join(out, "photos")))      # one per identity
    assert photos == sorted(f"id{k}.png" for k in range(len(load_identities())))
    assert {f"{i}.png" for i in ids} <= set(photos)
    with open(os.path.join(out, "labels.csv")) as f:
        assert f.readline().strip() == "title,frame,x1,y1,x2,y2,identity"
    labels = samples.read_labels_csv(os.path.join(out, "labels.csv"))
    assert labels == {os.path.basename(p): t.boxes for p, t in items}
    assert items[0][1].boxes != items[1][1].boxes
    url = "memory://samples-test/one.csv"
    items[0][1].write_labels_csv(url, "x.mp4")
    assert samples.read_labels_csv(url) == {"x.mp4": items[0][1].boxes}


def test_explicit_shots_deterministic_and_validated(tmp_path):
    shots = [samples.ShotSpec((6,), 8, 1), samples.ShotSpec((0, 6), 7, 2)]
    a = samples.make_clip(str(tmp_path / "a.mp4"), shots, seed=4)
    b = samples.make_clip(str(tmp_path / "b.mp4"), shots, seed=4)
    assert a == b
    assert a.frame_count == 15 and a.shot_boundaries == [0, 8]
    assert {r[5] for r in a.boxes if r[0] < 8} == {"id6"}
    assert {r[5] for r in a.boxes if r[0] >= 8} == {"id0", "id6"}
    assert len(decord.VideoReader(str(tmp_path / "a.mp4"))) == 15
    with pytest.raises(ValueError):
        samples.make_clip(str(tmp_path / "c.mp4"), [samples.ShotSpec((0, 1, 2, 3), 5)])
    with pytest.raises(ValueError):
        samples.make_clip(str(tmp_path / "d.mp4"), [samples.ShotSpec((0, 1, 2), 5)], width=300)
    with pytest.raises(ValueError):
        samples.make_clip(str(tmp_path / "e.mp4"), [samples.ShotSpec((2, 2), 5)])
    assert not (tmp_path / "c.mp4").exists()  # validated before anything is written


def test_mp4v_fallback_without_pyav(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    path = str(tmp_path / "v.mp4")
    truth = samples.make_clip(path, [samples.ShotSpec((1, 2), 6, 0), samples.ShotSpec((3,), 5, 1)])
    with open(path, "rb") as f:
        data = f.read()
    assert b"mp4v" in data and b"avc1" not in data  # the MPEG-4 part 2 sample entry
    vr = decord.VideoReader(path)
    assert len(vr) == truth.frame_count == 11 and vr[0].shape == (360, 640, 3)


def test_cli(tmp_path, capsys):
    assert samples.main([str(tmp_path), "--titles", "1", "--seed", "7"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["labels.csv", "photos", "title_0.mp4"]
    assert "title_0.mp4" in capsys.readouterr().out
