"""Face crops in the shard (``--crops none|sample|all``) on a real video with the real backend:
``all`` stores every face's aligned crop (the same image as re-aligning the decoded frame, up to
JPEG loss), ``sample`` an even spread plus the tracklet seeds (the very bytes ``all`` stores),
``none`` nothing and encodes nothing; the other columns do not depend on the mode."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import CROWD, FACE_PACK, need
from harvest.config import HarvestConfig, RunOptions
from harvest.config import PIPELINE_VERSION
from harvest.dataset.schema import read_metadata

STRIDE = 3          # crowd.mp4: 105 frames -> 35 detected frames, tracks of up to 35 faces
PER_TRACK = 4       # well below the track lengths, so sample differs from all


@pytest.fixture(scope="module")
def backend():
    from harvest.faces.registry import load_backend
    return load_backend(HarvestConfig(backend="insightface", models=need(FACE_PACK)), threads=2)


def harvest(backend, crops: str, scratch: str) -> tuple:
    """-> (shard table, its metadata) of crowd.mp4 harvested with ``crops``."""
    from harvest.title.pipeline import harvest_title
    config = HarvestConfig(backend="insightface", models=need(FACE_PACK), det_stride=STRIDE,
                           crops=crops, crops_per_track=PER_TRACK)
    result = harvest_title(need(CROWD), backend, config, RunOptions(scratch_dir=scratch))
    meta = dict(title_id="crowd", source_uri="x", fps=result.info.fps, width=result.info.width,
                height=result.info.height, frame_count=result.frames, backend=backend.name,
                detector_file="", detector_sha256="", embedder_file="", embedder_sha256="",
                config_hash="c", shot_boundaries=result.shot_boundaries,
                min_track_seconds=config.min_track_seconds, det_stride=STRIDE, crops=crops,
                crops_per_track=PER_TRACK, crop_size=backend.crop_size)
    with result.tracks as tracks:
        table = pq.read_table(tracks.write_shard("crowd", meta))
    return table, meta


@pytest.fixture(scope="module")
def shards(backend, tmp_path_factory):
    import harvest.title.pipeline as P
    calls = []
    encode = P.encode_crops

    def counting(crops):                  # a spy: counts the encoder calls, then encodes
        calls.append(len(crops))
        return encode(crops)
    P.encode_crops = counting
    try:
        out = {}
        for mode in ("none", "all", "sample"):
            n = len(calls)
            out[mode] = harvest(backend, mode, str(tmp_path_factory.mktemp(mode)))
            out[mode + "_encoded"] = sum(calls[n:])
    finally:
        P.encode_crops = encode
    return out


def test_all_stores_every_face_as_its_realigned_crop(shards, backend):
    from harvest.video.decode import ChunkedVideoReader
    from harvest.faces.base import Detections
    from harvest.dataset.shard import decode_crop
    from harvest.dataset.validate import validate_table
    table, meta = shards["all"]
    assert read_metadata(table.schema)["pipeline_version"] == PIPELINE_VERSION == "1.4.0"
    assert validate_table(table) == []
    n_faces = table.column("n_faces").to_pylist()
    positions = table.column("crop_positions").to_pylist()
    crops = table.column("crops").to_pylist()
    assert sum(n_faces) > 100 and max(n_faces) > 3 * PER_TRACK
    assert positions == [list(range(n)) for n in n_faces]
    assert shards["all_encoded"] == sum(n_faces)
    # every face: (frame, landmarks, stored crop); re-align the decoded frame and compare
    wanted: dict[int, list] = {}
    for fr, lm, cr in zip(table.column("frame_idx").to_pylist(),
                          table.column("landmarks").to_pylist(), crops):
        for f, k, c in zip(fr, lm, cr):
            wanted.setdefault(f, []).append((np.asarray(k, np.float32).reshape(5, 2), c))
    diffs, other = [], []
    with ChunkedVideoReader(need(CROWD)) as reader:
        for chunk in reader.chunks():
            for i in range(len(chunk.frames)):
                faces = wanted.pop(chunk.start + i, [])
                if not faces:
                    continue
                kps = np.stack([k for k, _ in faces])
                dets = Detections(np.zeros((len(faces), 4), np.float32), kps,
                                  np.ones(len(faces), np.float32))
                again = backend.align(chunk.frames[i], dets).astype(np.float32)
                stored = np.stack([decode_crop(c) for _, c in faces]).astype(np.float32)
                assert stored.shape == again.shape == (len(faces), 112, 112, 3)
                diffs += np.abs(stored - again).mean(axis=(1, 2, 3)).tolist()
                if len(faces) > 1:                      # a different face of the same frame
                    other += np.abs(stored - np.roll(again, 1, 0)).mean(axis=(1, 2, 3)).tolist()
    assert not wanted and len(diffs) == sum(n_faces)
    print(f"mean abs diff stored vs re-aligned: mean {np.mean(diffs):.2f}, max {max(diffs):.2f}; "
          f"vs another face of the frame: mean {np.mean(other):.2f}")
    assert max(diffs) < 3.0                              # JPEG q90 loss only (0..255 scale)
    assert np.median(other) > 5 * np.median(diffs)


def test_sample_is_even_plus_tracklet_seeds_and_the_same_bytes_as_all(shards):
    from harvest.miners import mine_tracklets
    from harvest.dataset.validate import validate_table
    sample, _ = shards["sample"]
    full, _ = shards["all"]
    assert validate_table(sample) == []
    n_faces = sample.column("n_faces").to_pylist()
    emb = sample.column("embeddings").to_pylist()
    all_crops = full.column("crops").to_pylist()
    n_seed_extra = 0
    for t, (n, pos, crops) in enumerate(zip(n_faces, sample.column("crop_positions").to_pylist(),
                                            sample.column("crops").to_pylist())):
        assert pos == sorted(set(pos)) and len(pos) == len(crops)
        seeds = mine_tracklets(np.asarray(emb[t], np.float32), 3).seeds
        assert set(seeds) <= set(pos)
        if n <= PER_TRACK:
            assert pos == list(range(n))
        else:
            even = [int(np.floor(x + 0.5)) for x in np.linspace(0, n - 1, PER_TRACK)]
            assert even[0] == 0 and even[-1] == n - 1 and len(set(even)) == PER_TRACK
            assert set(pos) == set(even) | set(seeds)
            gaps = np.diff(even)
            assert gaps.max() - gaps.min() <= 1                   # evenly spread
            n_seed_extra += len(set(seeds) - set(even))
        assert len(pos) <= PER_TRACK + 3
        assert crops == [all_crops[t][p] for p in pos]            # the same encoded faces
    assert n_seed_extra > 0                                       # seeds did add crops
    assert shards["sample_encoded"] == shards["all_encoded"]      # encoded once, selected at close


def test_none_stores_and_encodes_nothing_and_other_columns_do_not_change(shards):
    from harvest.dataset.validate import validate_table
    none, _ = shards["none"]
    assert validate_table(none) == []
    assert shards["none_encoded"] == 0
    assert set(map(len, none.column("crops").to_pylist())) == {0}
    assert set(map(len, none.column("crop_positions").to_pylist())) == {0}
    rest = [c for c in none.column_names if c not in ("crops", "crop_positions")]
    for mode in ("all", "sample"):
        other, _ = shards[mode]
        assert other.select(rest).equals(none.select(rest)), mode


def test_crops_options_are_part_of_the_config_hash():
    from harvest.cli import config_from, parse
    base = HarvestConfig().content_hash("insightface")
    assert HarvestConfig().crops == "sample" and HarvestConfig().crops_per_track == 16
    assert HarvestConfig(crops="all").content_hash("insightface") != base
    assert HarvestConfig(crops_per_track=8).content_hash("insightface") != base
    args = parse(["run", "--input", "x", "--output", "y", "--crops", "none",
                  "--crops-per-track", "5", "--det-stride", "1"])
    assert config_from(args) == HarvestConfig(crops="none", crops_per_track=5)
    with pytest.raises(ValueError):
        HarvestConfig(crops="some")
    with pytest.raises(SystemExit):
        parse(["run", "--input", "x", "--output", "y", "--crops", "some"])


def test_undetected_frames_of_a_track_get_interpolated_boxes(shards):
    """At stride 3 the frames between two detections are stored as interpolated boxes: detected +
    interpolated frames are every frame of the track's span, and each interpolated box lies
    between the two detections around it (the shard validates)."""
    from harvest.dataset.validate import validate_table
    table, _ = shards["none"]
    assert validate_table(table) == []
    rows = table.select(["frame_idx", "boxes", "interp_frame_idx", "interp_boxes"]).to_pylist()
    n_interp = 0
    for r in rows:
        f, b = np.array(r["frame_idx"]), np.array(r["boxes"])
        fi, bi = np.array(r["interp_frame_idx"], np.int64), np.array(r["interp_boxes"]).reshape(-1, 4)
        assert sorted(np.r_[f, fi].tolist()) == list(range(f[0], f[-1] + 1))
        assert (f % STRIDE == 0).all()          # only every STRIDE-th frame is detected
        right = np.searchsorted(f, fi)
        lo, hi = np.minimum(b[right - 1], b[right]), np.maximum(b[right - 1], b[right])
        assert ((bi >= lo - 1e-3) & (bi <= hi + 1e-3)).all()
        n_interp += len(fi)
    assert n_interp >= (STRIDE - 1) * sum(len(r["frame_idx"]) - 1 for r in rows)
