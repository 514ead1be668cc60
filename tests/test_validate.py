"""harvest.dataset.validate: a hand-built valid shard validates clean; each broken invariant is reported."""
from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest

from harvest.config import PIPELINE_VERSION
from harvest.dataset import schema as S
from harvest.dataset import storage
from harvest.dataset.validate import validate_main, validate_output, validate_table

D = 4
META = {
    "title_id": "t0001", "source_uri": "file:///videos/a.mp4", "fps": 10.0, "width": 640,
    "height": 360, "frame_count": 100, "backend": "dlib", "detector_file": "det.onnx",
    "detector_sha256": "0" * 64, "embedder_file": "emb.onnx", "embedder_sha256": "1" * 64,
    "embedding_dim": D, "pipeline_version": PIPELINE_VERSION, "config_hash": "abc",
    "shot_boundaries": [0, 50], "min_track_seconds": 1.0, "det_stride": 1,
    "crops": "sample", "crops_per_track": 4, "crop_size": 112,
}


def _jpeg(rng, size=112):
    from harvest.dataset.shard import encode_crops
    return encode_crops(rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8))[0]


def _unit(rng, n):
    v = rng.normal(size=(n, D))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32).tolist()


def _track(rng, track_id, shot_id, frames, cannot_link=(), hard_negative=None, valid=True):
    n = len(frames)
    emb = _unit(rng, n)
    mean = np.mean(emb, axis=0)
    x = np.arange(n, dtype=np.float32)
    if n >= 3:
        k = n // 3
        members = [list(range(k)), list(range(n - 1, n - 1 - k, -1)), list(range(k, 2 * k))]
        tracklets = [(np.mean([emb[i] for i in m], axis=0)
                      / np.linalg.norm(np.mean([emb[i] for i in m], axis=0))).tolist()
                     for m in members]
    else:
        members, tracklets = [], None
    from harvest.miners.hard_positive import tracklet_seeds
    from harvest.title.tracks import crop_positions
    seeds = tracklet_seeds(np.asarray(emb, np.float32), members)
    positions = crop_positions(n, META["crops"], META["crops_per_track"], seeds).tolist()
    from harvest.title.tracking import interpolate_boxes
    boxes = [[10 + i, 20, 50 + i, 70] for i in x.tolist()]
    interp_frames, interp_boxes = interpolate_boxes(np.asarray(frames), np.asarray(boxes))
    return {
        "title_id": META["title_id"], "track_id": track_id, "shot_id": shot_id, "n_faces": n,
        "frame_idx": list(frames), "timestamps": [f / META["fps"] for f in frames],
        "boxes": boxes, "interp_frame_idx": interp_frames.tolist(),
        "interp_boxes": interp_boxes.tolist(),
        "landmarks": [[1.0] * 10 for _ in range(n)],
        "det_score": [0.9] * n, "face_size": [40.0] * n, "blur": [100.0] * n,
        "embeddings": emb, "mean_embedding": (mean / np.linalg.norm(mean)).tolist(),
        "tracklets": tracklets, "tracklet_members": members,
        "crops": [_jpeg(rng) for _ in positions], "crop_positions": positions,
        "cannot_link": list(cannot_link), "hard_negative": hard_negative,
        "track_quality": 0.8, "is_valid": valid, "invalid_reason": None if valid else "short",
    }


def _rows():
    rng = np.random.default_rng(0)
    return [
        _track(rng, 1, 0, range(10, 20), cannot_link=[2], hard_negative=2),
        _track(rng, 2, 0, range(15, 25), cannot_link=[1], hard_negative=1),
        _track(rng, 3, 1, range(60, 84, 2)),       # detected every 2nd frame: 11 interpolated
        _track(rng, 4, 1, [80, 81], valid=False),
    ]


def _table(rows, meta=META):
    return pa.Table.from_pylist(rows, schema=S.with_metadata(S.shard_schema(D), meta))


def test_valid_table_is_clean():
    assert validate_table(_table(_rows())) == []
    assert validate_table(_table(_rows()), min_track_frames=10) == []


def test_a_shard_of_an_earlier_version_with_nullable_vector_values_still_checks():
    """Before 1.4.0 a vector's float values were declared nullable; only that differs."""
    table = _table(_rows())
    older = pa.schema([pa.field(f.name, S.loose_type(f.type), f.nullable) for f in table.schema],
                      metadata=table.schema.metadata)
    assert older.field("embeddings").type != table.schema.field("embeddings").type
    assert validate_table(table.cast(older)) == []
    wrong = pa.schema([pa.field(f.name, pa.list_(pa.float64(), D) if f.name == "mean_embedding"
                                else f.type, f.nullable) for f in table.schema],
                      metadata=table.schema.metadata)
    assert any("mean_embedding" in p for p in validate_table(
        pa.Table.from_pylist(_rows(), schema=wrong)))


def _set(i, key, value):
    def f(rows):
        rows[i][key] = value
    return f


def _scale_embedding(rows):
    rows[0]["embeddings"][3] = [2 * v for v in rows[0]["embeddings"][3]]


def _cross_shot(rows):  # track 3 now starts in shot 0 and ends in shot 1
    rows[2]["frame_idx"] = list(range(45, 57))


def _no_shared_frame(rows):  # track 2 moved after track 1: the link no longer holds
    rows[1]["frame_idx"] = list(range(30, 40))


def _drop_det_score(rows):
    rows[0]["det_score"] = rows[0]["det_score"][:-1]


def _link_invalid(rows):
    rows[2]["cannot_link"], rows[3]["cannot_link"] = [4], [3]
    rows[3]["frame_idx"] = [60, 61]


def _swap_tracklets(rows):
    rows[0]["tracklets"] = rows[0]["tracklets"][::-1]


def _other_mean(rows):
    rows[0]["mean_embedding"] = rows[1]["mean_embedding"]


def _crop_of_size(i, size):
    def f(rows):
        rows[i]["crops"][1] = _jpeg(np.random.default_rng(1), size)
    return f


def _drop_seed(rows):   # the anchor seed of track 3 loses its crop
    from harvest.miners.hard_positive import tracklet_seeds
    r = rows[2]
    seed = tracklet_seeds(np.asarray(r["embeddings"], np.float32), r["tracklet_members"])[0]
    k = r["crop_positions"].index(seed)
    del r["crop_positions"][k], r["crops"][k]


def _too_many_crops(rows):
    r = rows[2]
    r["crop_positions"] = list(range(r["n_faces"]))
    r["crops"] = [r["crops"][0]] * r["n_faces"]


def _drop_interp(rows):
    rows[2]["interp_frame_idx"].pop()
    rows[2]["interp_boxes"].pop()


CORRUPTIONS = {
    "asymmetric cannot-link": (_set(1, "cannot_link", []), "not symmetric"),
    "hard_negative not in cannot_link": (_set(2, "hard_negative", 1), "hard_negative not in"),
    "non-unit embedding": (_scale_embedding, "embeddings not unit-norm"),
    "non-unit mean": (_set(0, "mean_embedding", [1.0, 1.0, 0.0, 0.0]), "mean_embedding not unit"),
    "decreasing frames": (_set(0, "frame_idx", [10, 11, 12, 14, 13, 15, 16, 17, 18, 19]),
                          "not strictly increasing"),
    "frame beyond frame_count": (_set(2, "frame_idx", list(range(90, 102))), "outside [0, 100)"),
    "track crossing a shot": (_cross_shot, "crosses a shot boundary"),
    "linked pair sharing no frame": (_no_shared_frame, "sharing no frame"),
    "duplicate track_id": (_set(3, "track_id", 3), "track_id not unique"),
    "length mismatch": (_drop_det_score, "det_score: length != n_faces"),
    "link to unknown track": (_set(2, "cannot_link", [99]), "not in the title"),
    "self link": (_set(2, "cannot_link", [3]), "self-links"),
    "link with invalid track": (_link_invalid, "invalid tracks"),
    "bad box": (_set(0, "boxes", [[50, 20, 10, 70]] + [[10, 20, 50, 70]] * 9), "boxes not finite"),
    "overlapping tracklet members": (_set(0, "tracklet_members", [[0, 1, 2], [2, 8, 7], [3, 4, 5]]),
                                     "not disjoint"),
    "tracklet member out of range": (
        _set(0, "tracklet_members", [[0, 1, 2], [10, 8, 7], [3, 4, 5]]), "outside [0, n_faces)"),
    "title_id mismatch": (_set(0, "title_id", "other"), "title_id column"),
    "decreasing timestamps": (_set(0, "timestamps", [1.0, 1.1, 1.2, 1.3, 1.2] + [1.5] * 5),
                              "timestamps decreasing"),
    "non-finite timestamp": (_set(2, "timestamps", [float("nan")] + [6.0] * 11),
                             "timestamps: non-finite"),
    "timestamps length": (_set(1, "timestamps", [1.5]), "timestamps: length != n_faces"),
    "tracklet is not its members' mean": (_swap_tracklets, "normalised means of their"),
    "mean_embedding is not the faces' mean": (_other_mean, "normalised mean of the track"),
    "undecodable crop": (lambda rows: rows[0]["crops"].__setitem__(0, b"not a jpeg"),
                         "crops: not a decodable 112x112"),
    "empty crop bytes": (lambda rows: rows[1]["crops"].__setitem__(2, b""), "not a decodable"),
    "wrong crop size": (_crop_of_size(0, 64), "crops: not a decodable 112x112"),
    "crop position out of range": (lambda rows: rows[2]["crop_positions"].__setitem__(-1, 12),
                                   "crop_positions outside [0, n_faces)"),
    "crop positions unsorted": (lambda rows: rows[0]["crop_positions"].reverse(),
                                "crop_positions not strictly increasing"),
    "crops and positions differ in length": (lambda rows: rows[0]["crops"].pop(),
                                             "len(crops) != len(crop_positions)"),
    "missing tracklet seed crop": (_drop_seed, "tracklet seed face has no crop"),
    "too many sampled crops": (_too_many_crops, "more than 7 crops"),
    "interpolated frame on a detected frame": (
        lambda rows: rows[2]["interp_frame_idx"].__setitem__(0, 60), "on a detected frame"),
    "interpolated frames missing": (_drop_interp, "do not count every frame of the span"),
    "interp_boxes length": (lambda rows: rows[2]["interp_boxes"].pop(),
                            "interp_boxes: length != interp_frame_idx"),
    "bad interpolated box": (lambda rows: rows[2]["interp_boxes"].__setitem__(0, [5, 5, 1, 1]),
                             "interp_boxes not finite"),
}


def _short_track(rows):
    rows[2] = _track(np.random.default_rng(1), 3, 1, range(60, 65))


def _null_face(rows):
    rows[0]["blur"][0] = None


CORRUPTIONS.update({
    "non-finite landmark": (lambda rows: rows[1]["landmarks"].__setitem__(0, [float("inf")] * 10),
                            "landmarks: non-finite"),
    "short valid track": (_short_track, "shorter than 1.0 s"),
    "null face in a list": (_null_face, "null faces inside the lists"),
})

#: the rule (harvest.dataset.shard_rules) that must report each corruption
RULE_OF = {
    "asymmetric cannot-link": "cannot_link_rule", "hard_negative not in cannot_link":
    "cannot_link_rule", "link to unknown track": "cannot_link_rule", "self link":
    "cannot_link_rule", "link with invalid track": "cannot_link_rule",
    "linked pair sharing no frame": "co_occurrence_rule",
    "non-unit embedding": "unit_norm_rule", "non-unit mean": "unit_norm_rule",
    "decreasing frames": "frame_rule", "frame beyond frame_count": "frame_rule",
    "track crossing a shot": "frame_rule", "decreasing timestamps": "frame_rule",
    "non-finite timestamp": "frame_rule",
    "duplicate track_id": "identity_rule", "title_id mismatch": "identity_rule",
    "length mismatch": "list_length_rule", "timestamps length": "list_length_rule",
    "bad box": "box_rule",
    "overlapping tracklet members": "tracklet_member_rule",
    "tracklet member out of range": "tracklet_member_rule",
    "tracklet is not its members' mean": "mean_rule",
    "mean_embedding is not the faces' mean": "mean_rule",
    **{k: "crop_rule" for k in ("undecodable crop", "empty crop bytes", "wrong crop size",
                                "crop position out of range", "crop positions unsorted",
                                "crops and positions differ in length",
                                "missing tracklet seed crop", "too many sampled crops")},
    **{k: "interpolation_rule" for k in ("interpolated frame on a detected frame",
                                         "interpolated frames missing", "interp_boxes length",
                                         "bad interpolated box")},
    "non-finite landmark": "finite_rule", "short valid track": "min_length_rule",
    "null face in a list": "null_rule",
}


def _view(table):
    from harvest.dataset.shard_view import ShardView
    return ShardView(table, S.read_metadata(table.schema), D)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_is_reported_by_its_rule(name):
    """validate_table reports the corruption, its rule alone reports it on the shard's view,
    and the same rule passes the clean shard."""
    from harvest.dataset import shard_rules as R
    corrupt, expected = CORRUPTIONS[name]
    rows = copy.deepcopy(_rows())
    corrupt(rows)
    table = _table(rows)
    violations = validate_table(table)
    assert any(expected in v for v in violations), (name, violations)
    rule = getattr(R, RULE_OF[name])
    assert any(expected in v for v in rule(_view(table))), (name, rule.__name__)
    assert rule(_view(_table(_rows()))) == []


def test_every_rule_has_its_test():
    from harvest.dataset import shard_rules as R
    rules = {r.__name__ for r in R.RULES} | {"identity_rule", "list_length_rule", "null_rule"}
    assert rules == set(RULE_OF.values())
    assert set(RULE_OF) == set(CORRUPTIONS)


def test_schema_and_metadata_rules():
    from harvest.dataset import shard_rules as R
    table = _table(_rows())
    assert R.schema_rule(table) == ([], D)
    out, dim = R.schema_rule(table.drop_columns(["blur"]))
    assert dim is None and out == ["schema: missing column 'blur'"]
    assert R.schema_rule(table.drop_columns(["mean_embedding"]))[1] is None
    assert R.metadata_rule(_view(table)) == []
    from harvest.dataset.shard_view import ShardView
    meta = {k: v for k, v in META.items() if k != "fps"}
    assert R.metadata_rule(ShardView(table, meta, D)) == ["metadata: missing fields ['fps']"]
    assert R.metadata_rule(ShardView(table, dict(META, embedding_dim=8), D)) == [
        "metadata: embedding_dim 8 != D 4 of the schema"]


def test_unlinked_cooccurring_valid_tracks_are_reported():
    rows = _rows()
    rows[0]["cannot_link"], rows[1]["cannot_link"] = [], []
    rows[0]["hard_negative"] = rows[1]["hard_negative"] = None
    assert any("not cannot-linked" in v for v in validate_table(_table(rows)))


def test_short_valid_track_is_reported():
    rows = _rows()
    rows[2] = _track(np.random.default_rng(1), 3, 1, range(60, 65))
    violations = validate_table(_table(rows))
    assert any("shorter than 1.0 s" in v for v in violations), violations
    meta = {k: v for k, v in META.items() if k not in ("min_track_seconds", "det_stride")}
    assert validate_table(_table(rows, meta)) == []
    assert any("shorter than 8 frames" in v
               for v in validate_table(_table(rows, meta), min_track_frames=8))


def test_crops_mode_all_and_none():
    rows = _rows()
    meta_all, meta_none = dict(META, crops="all"), dict(META, crops="none")
    assert any("crops mode all but not every face" in v for v in validate_table(_table(rows, meta_all)))
    assert any("crops mode none but crops stored" in v for v in validate_table(_table(rows, meta_none)))
    rng = np.random.default_rng(2)
    for r in rows:
        r["crop_positions"] = list(range(r["n_faces"]))
        r["crops"] = [_jpeg(rng) for _ in range(r["n_faces"])]
    assert validate_table(_table(rows, meta_all)) == []
    for r in rows:
        r["crop_positions"], r["crops"] = [], []
    assert validate_table(_table(rows, meta_none)) == []
    # without the crop keys in the metadata, only the mode-independent checks apply
    bare = {k: v for k, v in META.items() if k not in S.CROP_METADATA}
    assert validate_table(_table(rows, bare)) == []


def test_wrong_schema_and_missing_metadata():
    table = _table(_rows())
    bad = table.drop_columns(["blur"])
    assert any("missing column 'blur'" in v for v in validate_table(bad))
    bare = table.replace_schema_metadata(None)
    assert any("metadata" in v for v in validate_table(bare))


def _write_output(url, n=2):
    fs, root = storage.open_fs(url)
    records = {}
    for i in range(n):
        meta = dict(META, title_id=f"t{i}")
        rows = _rows()
        for r in rows:
            r["title_id"] = meta["title_id"]
        table = _table(rows, meta)
        path, sha = storage.write_shard(fs, root, table)
        rec = {k: None for k in S.MANIFEST_FIELDS}
        rec.update(title_id=meta["title_id"], source=meta["source_uri"], status=S.STATUS_DONE,
                   shard_path=path, shard_sha256=sha, frames=100, faces=34, tracks=4,
                   valid_tracks=3, cannot_link_pairs=1, seconds=1.0, config_hash="abc",
                   backend="dlib", pipeline_version=PIPELINE_VERSION)
        storage.write_record(fs, root, rec)
        records[rec["title_id"]] = rec
    storage.write_manifest(fs, root, records)
    return fs, root, records


def test_validate_output_clean(tmp_path, capsys):
    _write_output(str(tmp_path))
    report = validate_output(str(tmp_path))
    assert report["ok"], report
    assert report["n_shards"] == 2 and report["n_records"] == 2
    assert validate_main(str(tmp_path)) == 0
    assert "VALID" in capsys.readouterr().out


def test_validate_output_sha_mismatch_and_missing_shard(tmp_path, capsys):
    fs, root, records = _write_output(str(tmp_path), n=3)
    rec = dict(records["t0"], shard_sha256="f" * 64)
    storage.write_record(fs, root, rec)
    fs.rm(storage.shard_path(root, "t1"))
    rec2 = dict(records["t2"], tracks=5)
    storage.write_record(fs, root, rec2)
    report = validate_output(str(tmp_path))
    assert not report["ok"]
    assert any("t0" in v and "sha256 mismatch" in v for v in report["manifest"])
    assert any("t1" in v and "missing" in v for v in report["manifest"])
    assert any("tracks=5" in v for v in report["shards"]["t2"])
    assert validate_main(str(tmp_path)) == 1
    assert "INVALID" in capsys.readouterr().out


def test_validate_output_orphan_shard_in_memory_fs():
    url = "memory://validate-orphan"
    fs, root, _ = _write_output(url, n=1)
    try:
        fs.rm(storage.record_path(root, "t0"))
        report = validate_output(url)
        assert any("no manifest record" in v for v in report["manifest"])
        assert report["shards"]["t0"] == []
    finally:
        fs.rm(root, recursive=True)


def test_inspect_prints_manifest_and_shards(tmp_path, capsys):
    from harvest.dataset.inspect_output import inspect_main
    fs, root, records = _write_output(str(tmp_path), n=2)
    storage.write_record(fs, root, dict(records["t1"], status=S.STATUS_FAILED, error="x" * 200))
    (tmp_path / "shards" / "junk.parquet").write_bytes(b"not parquet")
    assert inspect_main(str(tmp_path)) == 0
    out = capsys.readouterr().out
    print(out)
    assert "t0" in out and "a.mp4" in out and "failed" in out and "unreadable" in out
    assert "TOTAL" in out and "x" * 61 not in out
    assert inspect_main(str(tmp_path / "nope")) == 1


def test_a_copied_output_is_validated_as_the_copy(tmp_path, capsys):
    """Records name the shard where the harvest wrote it; after the output is copied (and the
    original changed or gone), validate checks the copy's own shards, and still catches a
    copy whose shard does not match its record."""
    import shutil
    _write_output(str(tmp_path / "out"))
    shutil.copytree(tmp_path / "out", tmp_path / "copy")
    fs, root = storage.open_fs(str(tmp_path / "out"))
    fs.rm(storage.shard_path(root, "t1"))                         # the original loses a shard
    fs.pipe_file(storage.shard_path(root, "t0"), b"not the shard")
    report = validate_output(str(tmp_path / "copy"))
    assert report["ok"] and not report["warnings"], report
    assert validate_main(str(tmp_path / "copy")) == 0 and "VALID" in capsys.readouterr().out
    dst = storage.open_fs(str(tmp_path / "copy"))[1]
    fs.pipe_file(storage.shard_path(dst, "t1"), fs.cat_file(storage.shard_path(dst, "t0")))
    report = validate_output(str(tmp_path / "copy"))
    assert any("t1" in v and "sha256 mismatch" in v for v in report["manifest"]), report
    fs.rm(storage.shard_path(dst, "t0"))
    report = validate_output(str(tmp_path / "copy"))
    assert any("t0" in v and f"{dst}/shards/t0.parquet is missing" in v
               for v in report["manifest"]), report
