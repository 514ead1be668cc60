"""`harvest card`: a Hugging Face dataset card built from a real harvest (crowd.mp4, a sample
clip and an empty file, SCRFD + MobileFaceNet, real Ray). The harvest is made once per session
by ``harvest_output`` and shared with tests/test_ecosystem.py."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import CROWD, FACE_PACK, need

from harvest import cli
from harvest.config import PIPELINE_VERSION
from harvest.dataset import schema as S

_HARVEST: dict[str, str] = {}


def harvest_output(tmp_path_factory) -> str:
    """Output root of one real harvest per test session: crowd.mp4, a two-shot sample clip
    (two faces together, then one) and a 0-byte ``broken.mp4`` (a failed title)."""
    if "out" not in _HARVEST:
        from harvest.samples import ShotSpec, make_clip
        crowd, pack = need(CROWD), need(FACE_PACK)
        root = tmp_path_factory.mktemp("card_harvest")
        videos = root / "videos"
        videos.mkdir()
        shutil.copy(crowd, videos / "crowd.mp4")
        make_clip(str(videos / "clip.mp4"), [ShotSpec((0, 1), 32, 1), ShotSpec((2,), 30, 2)])
        (videos / "broken.mp4").write_bytes(b"")
        out = str(root / "out")
        rc = cli.main(["run", "--input", str(videos), "--output", out, "--models", pack,
                       "--no-progress", "--workers", "1"])
        assert rc == cli.EXIT_TITLES_FAILED          # broken.mp4 fails, the others are done
        _HARVEST["out"] = out
    return _HARVEST["out"]


def manifest(out: str) -> dict[str, dict]:
    with open(os.path.join(out, "manifest.jsonl")) as f:
        return {r["title_id"]: r for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def out(tmp_path_factory, ray_cluster):
    return harvest_output(tmp_path_factory)


@pytest.fixture(scope="module")
def card(out):
    assert cli.main(["card", out]) == 0
    with open(os.path.join(out, "README.md")) as f:
        return f.read()


def split_card(text: str) -> tuple[dict, str]:
    m = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert m, "the card must start with YAML front matter between --- lines"
    return yaml.safe_load(m.group(1)), m.group(2)


def section(body: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", body, re.S | re.M)
    assert m, f"no section {title!r}"
    return m.group(1)


def table_rows(text: str) -> list[list[str]]:
    """Cells of the markdown table rows in ``text`` (header and separator dropped)."""
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            for line in text.splitlines() if line.startswith("|")]
    return rows[2:]


def test_front_matter_is_valid_hub_metadata(out, card):
    meta, _ = split_card(card)
    records = manifest(out)
    n_tracks = sum(r["tracks"] for r in records.values() if r["status"] == "done")
    assert meta["license"] == "other"
    assert meta["task_categories"] == ["image-feature-extraction"]
    assert meta["size_categories"] == ["n<1K"] and n_tracks < 1000
    assert isinstance(meta["pretty_name"], str) and meta["pretty_name"]
    assert "faces" in meta["tags"]
    (config,) = meta["configs"]
    assert config["config_name"] == "default"
    (files,) = config["data_files"]
    assert files["path"] == "shards/*.parquet"
    shards = sorted(glob.glob(os.path.join(out, files["path"])))
    assert [os.path.basename(p) for p in shards] == sorted(
        f"{t}.parquet" for t, r in records.items() if r["status"] == "done")

    hub = pytest.importorskip("huggingface_hub")
    loaded = hub.DatasetCard.load(os.path.join(out, "README.md"))
    assert loaded.data.to_dict() == meta
    assert loaded.data.license == "other" and loaded.data.pretty_name == meta["pretty_name"]
    datasets = pytest.importorskip("datasets")
    from datasets.utils.metadata import MetadataConfigs
    configs = MetadataConfigs.from_dataset_card_data(loaded.data)   # datasets' own parser
    assert configs.get_default_config_name() == "default"
    sizes = os.path.join(os.path.dirname(datasets.__file__), "utils", "resources",
                         "size_categories.json")
    with open(sizes) as f:
        assert meta["size_categories"][0] in json.load(f)


def test_numbers_equal_the_manifest(out, card):
    _, body = split_card(card)
    records = manifest(out)
    done = [r for r in records.values() if r["status"] == "done"]
    contents = {k: int(v) for k, v in table_rows(section(body, "Contents"))}
    assert contents["titles"] == len(records) == 3
    assert contents["titles done"] == len(done) == 2
    assert contents["titles failed"] == 1
    for k in S.COUNT_FIELDS:
        assert contents[k.replace("_", " ")] == sum(r[k] for r in done), k
    assert contents["cannot link pairs"] > 0 and contents["tracks"] > contents["valid tracks"]

    rows = {r[0].strip("`"): r for r in table_rows(section(body, "Sources"))}
    assert set(rows) == set(records)
    for tid, r in records.items():
        row = rows[tid]
        assert row[1] == os.path.basename(r["source"]) and row[2] == r["status"]
        assert [int(v) for v in row[3:8]] == [r[k] for k in S.COUNT_FIELDS]
    assert "empty" in rows[next(t for t in records if t.startswith("broken"))][-1]


def test_config_models_and_licences_come_from_the_shards(out, card):
    from harvest.dataset.card import SETUP_FIELDS, default_config_matches, model_licence
    from harvest.faces.registry import BACKENDS
    _, body = split_card(card)
    metas = [S.read_metadata(pq.read_schema(p))
             for p in sorted(glob.glob(os.path.join(out, "shards", "*.parquet")))]
    assert len({m["config_hash"] for m in metas}) == 1
    meta = metas[0]
    config = dict(table_rows(section(body, "Harvest configuration"))[:len(SETUP_FIELDS)])
    for k in ("config_hash", "backend", "detector_sha256", "embedder_sha256", "pipeline_version",
              "det_stride", "min_track_seconds", "embedding_dim", "crops", "det_size",
              "shot_threshold", "quality_mad_k"):
        assert config[k] == f"`{meta[k]}`", k
    assert default_config_matches(meta)                # the run used the default settings
    assert "checked by recomputing the hash" in body
    assert not default_config_matches({**meta, "det_stride": 2})
    assert not default_config_matches({**meta, "crops": "all"})
    assert not default_config_matches({**meta, "embedder_sha256": "0" * 64})

    models = {r[2]: r for r in table_rows(section(body, "Model files and licences"))}
    assert set(models) == {meta["detector_file"], meta["embedder_file"]}
    for role in ("detector", "embedder"):
        row = models[meta[f"{role}_file"]]
        assert row[3] == f"`{meta[f'{role}_sha256']}`"
        assert row[4] == model_licence(meta["backend"], meta[f"{role}_file"]) != "not recorded"
    # every backend carries its licence table, with a catch-all entry
    for cls in BACKENDS.values():
        assert "*" in cls.licences, cls.name
    assert "non-commercial" in model_licence("insightface", "w600k_r50.onnx")
    assert "commercial" in model_licence("dlib", "shape_predictor_68_face_landmarks.dat")


def test_schema_table_has_every_column_with_its_arrow_type(out, card):
    _, body = split_card(card)
    schema = pq.read_schema(sorted(glob.glob(os.path.join(out, "shards", "*.parquet")))[0])
    assert list(S.COLUMN_DESCRIPTIONS) == S.shard_schema(8).names == schema.names
    rows = {r[0].strip("`"): r for r in table_rows(section(body, "Schema"))}
    assert list(rows) == schema.names
    for field in schema:
        assert rows[field.name][1] == f"`{field.type}`"
        assert rows[field.name][2] == S.COLUMN_DESCRIPTIONS[field.name].replace("|", "\\|")


def test_consent_and_limitations_sections(card):
    _, body = split_card(card)
    headings = re.findall(r"^## (.+)$", body, re.M)
    assert headings == ["Contents", "Sources", "Harvest configuration", "Model files and licences",
                        "Licence", "Schema", "Known limitations", "Consent and personal data"]
    consent = section(body, "Consent and personal data")
    assert "GDPR art. 9" in consent and "biometric" in consent
    assert "Removal" in consent and "identify" in consent


def test_card_is_deterministic_and_takes_options(out, card, tmp_path):
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    assert cli.main(["card", out, "--out", str(a)]) == 0
    assert cli.main(["card", out, "--out", str(b)]) == 0
    assert a.read_text() == b.read_text() == card
    for r in manifest(out).values():              # no clock, not even the manifest's
        assert not r["finished_at"] or r["finished_at"] not in card
    c = tmp_path / "c.md"
    assert cli.main(["card", out, "--out", str(c), "--license", "cc-by-nc-4.0",
                     "--pretty-name", "Crowd faces", "--contact", "privacy@example.org"]) == 0
    meta, body = split_card(c.read_text())
    assert meta["license"] == "cc-by-nc-4.0" and meta["pretty_name"] == "Crowd faces"
    assert body.startswith("\n# Crowd faces\n") and "privacy@example.org" in body
    assert cli.main(["card", str(tmp_path / "missing")]) == cli.EXIT_USAGE


def test_the_default_harvest_declares_its_face_images(out, card):
    """`harvest run` stores crops by default (--crops sample): the card counts them from the
    shards and never says the dataset holds no images."""
    _, body = split_card(card)
    crops = sum(len(c) for p in glob.glob(os.path.join(out, "shards", "*.parquet"))
                for c in pq.read_table(p, columns=["crop_positions"])["crop_positions"].to_pylist())
    assert crops > 0
    assert {k: int(v) for k, v in table_rows(section(body, "Contents"))}["face images"] == crops
    assert "holds no frames, only" not in body
    consent = " ".join(section(body, "Consent and personal data").split())
    assert f"{crops} face images" in consent and "--crops none`" in consent


def test_size_categories_follow_the_hub_bins():
    from harvest.dataset.card import size_category
    assert [size_category(n) for n in (0, 999, 1000, 9999, 10_000, 169_400, 2_000_000)] == [
        "n<1K", "n<1K", "1K<n<10K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M"]


def test_card_of_an_output_without_shards(tmp_path):
    """Every title failed: the card still parses, counts zero tracks and lists the columns."""
    from harvest.dataset import storage
    fs, root = storage.open_fs(str(tmp_path))
    storage.write_record(fs, root, {
        "title_id": "bad-000000000000", "source": "file:///videos/bad.mp4", "status": "failed",
        "error": "DecodeError: no frame", "shard_path": None, "shard_sha256": None,
        **dict.fromkeys(S.COUNT_FIELDS, 0), "seconds": 0.0, "config_hash": "0" * 16,
        "backend": "dlib", "pipeline_version": PIPELINE_VERSION, "finished_at": None})
    assert cli.main(["card", str(tmp_path)]) == 0
    meta, body = split_card((tmp_path / "README.md").read_text())
    assert meta["size_categories"] == ["n<1K"]
    contents = {k: int(v) for k, v in table_rows(section(body, "Contents"))}
    assert (contents["titles"], contents["titles failed"], contents["tracks"]) == (1, 1, 0)
    assert "No shard has been written yet." in section(body, "Harvest configuration")
    rows = {r[0].strip("`"): r for r in table_rows(section(body, "Schema"))}
    assert list(rows) == S.shard_schema(8).names
    assert re.fullmatch(r"`fixed_size_list<\w+: float not null>\[D\]`", rows["mean_embedding"][1])


# --- what the card declares follows from what the shards hold (no Ray: synthetic shards) ---------

def synthetic_output(root, crops_per_track: int, detector_file: str, embedder_file: str,
                     backend: str) -> tuple[str, int]:
    """An output root with two synthetic shards (``training.synthetic``) holding
    ``crops_per_track`` real JPEG face crops per track, their manifest records, and the model
    files of ``backend`` in the metadata. -> (root, crops stored)."""
    import cv2
    import numpy as np
    import pyarrow as pa

    from harvest.dataset import storage
    from training.synthetic import SyntheticSpec, make_title
    fs, out = storage.open_fs(str(root))
    jpeg = cv2.imencode(".jpg", np.full((32, 32, 3), 128, np.uint8))[1].tobytes()
    stored = 0
    for i in range(2):
        table, _, _ = make_title(f"title{i}", SyntheticSpec(dim=8, tracks_per_title=12), i, False)
        n = table.num_rows
        meta = {**S.read_metadata(table.schema), "backend": backend,
                "detector_file": detector_file, "embedder_file": embedder_file,
                "crops": "sample" if crops_per_track else "none"}
        k = [min(crops_per_track, f) for f in table.column("n_faces").to_pylist()]
        stored += sum(k)
        table = table.set_column(table.schema.get_field_index("crops"), "crops",
                                 pa.array([[jpeg] * c for c in k], pa.list_(pa.binary())))
        table = table.set_column(table.schema.get_field_index("crop_positions"), "crop_positions",
                                 pa.array([list(range(c)) for c in k], pa.list_(pa.int32())))
        table = table.replace_schema_metadata(None).cast(S.with_metadata(S.shard_schema(8), meta))
        fs.makedirs(f"{out}/shards", exist_ok=True)
        pq.write_table(table, f"{out}/shards/{meta['title_id']}.parquet")
        storage.write_record(fs, out, {
            "title_id": meta["title_id"], "source": f"file:///videos/{meta['title_id']}.mp4",
            "status": "done", "error": None, "shard_path": None, "shard_sha256": None,
            "frames": 100, "faces": int(sum(table.column("n_faces").to_pylist())),
            "tracks": n, "valid_tracks": n, "cannot_link_pairs": 0, "seconds": 1.0,
            "config_hash": "0" * 16, "backend": backend,
            "pipeline_version": PIPELINE_VERSION, "finished_at": None})
    return out, stored


def test_card_declares_the_face_images_the_shards_hold(tmp_path):
    """The default --crops sample stores face images: the card counts them from the shards,
    says they are biometric personal data and how to harvest without them."""
    out, stored = synthetic_output(tmp_path, 3, "scrfd_2.5g_bnkps.onnx", "mobilefacenet_128.onnx",
                                   "torch")
    assert stored > 0
    assert cli.main(["card", out]) == 0
    _, body = split_card((tmp_path / "README.md").read_text())
    contents = {k: int(v) for k, v in table_rows(section(body, "Contents"))}
    assert contents["face images"] == stored
    assert 0 < contents["face image bytes"] < contents["shard bytes"]
    assert contents["shards"] == 2
    licence = section(body, "Licence")
    assert "holds no frames, only" not in licence and f"{stored} face images" in licence
    consent = " ".join(section(body, "Consent and personal data").split())
    assert f"{stored} face images" in consent and "--crops none" in consent
    assert "Face images and face embeddings are biometric personal data" in consent
    assert "2 source video(s)" in consent
    roles = {r[2]: r[1] for r in table_rows(section(body, "Model files and licences"))}
    assert roles == {"scrfd_2.5g_bnkps.onnx": "face detector and 5 landmarks (SCRFD)",
                     "mobilefacenet_128.onnx": "face embedder (recognition network)"}


def test_card_of_a_crops_none_harvest_and_dlib_model_roles(tmp_path):
    """No crops stored: the card says no face images (embeddings still biometric); dlib's
    68-point landmark model is named by its role, not as the detector."""
    out, stored = synthetic_output(tmp_path, 0, "shape_predictor_68_face_landmarks.dat",
                                   "dlib_face_recognition_resnet_model_v1.dat", "dlib")
    assert stored == 0
    assert cli.main(["card", out]) == 0
    _, body = split_card((tmp_path / "README.md").read_text())
    contents = {k: int(v) for k, v in table_rows(section(body, "Contents"))}
    assert contents["face images"] == 0 == contents["face image bytes"]
    assert "no frames and no face images" in section(body, "Licence")
    consent = " ".join(section(body, "Consent and personal data").split())
    assert "hold no face image" in consent and "biometric personal data" in consent
    roles = {r[2]: r[1] for r in table_rows(section(body, "Model files and licences"))}
    assert roles["shape_predictor_68_face_landmarks.dat"].startswith("68-point face landmarks")
    assert "detector" not in roles["shape_predictor_68_face_landmarks.dat"].split("(")[0]
    assert roles["dlib_face_recognition_resnet_model_v1.dat"].startswith("face embedder")
