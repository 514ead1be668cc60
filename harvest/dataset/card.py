"""``harvest card URL``: a Hugging Face dataset card (README.md) for a harvest output.

The card is built only from what the output holds: the manifest records (counts, sources,
status), each shard's footer (file metadata, schema, column sizes) and its small
``crop_positions`` column (how many face images it holds). What the personal-data sections say
(face images or not, how many, how large) follows from those, never from a default. The same
output gives the same card byte for byte: rows are sorted and no clock is read.

    harvest card OUTPUT [--out PATH] [--license other] [--pretty-name NAME] [--contact WHO]
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import posixpath
from dataclasses import dataclass

import pyarrow.compute as pc
import pyarrow.parquet as pq

from harvest.config import HarvestConfig, model_digest
from harvest.dataset import schema as S
from harvest.dataset import storage
from harvest.dataset.inspect_output import human_size

CARD_FILE = "README.md"
TASK_CATEGORIES = ("image-feature-extraction",)
TAGS = ("faces", "face-clustering", "face-tracks", "video", "weak-supervision", "movieface")
# The Hub's size_categories, by number of rows (one row = one face track).
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                   (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"),
                   (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))
# Shard metadata that describes the harvest setup (the rest describes the title's video).
SETTINGS = tuple(HarvestConfig().settings())
SETUP_FIELDS = ("config_hash", "pipeline_version", "backend", "detector_file", "detector_sha256",
                "embedder_file", "embedder_sha256", "embedding_dim") + SETTINGS


def size_category(n_rows: int) -> str:
    for limit, label in SIZE_CATEGORIES:
        if n_rows < limit:
            return label
    return "n>1B"


# What each model file does, by file name (fnmatch pattern, first match wins); else the slot
# the shard records it in. dlib's HOG detector is built into dlib: with it the "detector" slot
# holds the 68-point landmark model, which finds no face.
MODEL_ROLES = {
    "shape_predictor_68_face_landmarks.dat": "68-point face landmarks (faces found by dlib's "
                                             "built-in HOG detector, which has no file)",
    "mmod_human_face_detector.dat": "face detector (dlib MMOD CNN)",
    "dlib_face_recognition_resnet_model_v1.dat": "face embedder (dlib ResNet)",
    "scrfd_*.onnx": "face detector and 5 landmarks (SCRFD)",
    "det_*.onnx": "face detector and 5 landmarks (SCRFD)",
}
SLOT_ROLES = {"detector": "face detector", "embedder": "face embedder (recognition network)"}


def model_role(slot: str, file_name: str) -> str:
    """What a model file does (``MODEL_ROLES``), else what its slot says."""
    for pattern, role in MODEL_ROLES.items():
        if fnmatch.fnmatch(file_name, pattern):
            return role
    return SLOT_ROLES.get(slot, slot)


def model_licence(backend: str, file_name: str) -> str:
    """Licence of a model file, from the ``licences`` table of its backend class."""
    from harvest.faces.registry import BACKENDS
    table = getattr(BACKENDS.get(backend), "licences", {})
    for pattern, licence in table.items():
        if fnmatch.fnmatch(file_name, pattern):
            return licence
    return "not recorded"


def default_config_matches(setup: dict) -> bool:
    """True when the shards' config hash is that of a HarvestConfig with the recorded settings
    (every setting since pipeline 1.2.0; older shards recorded a few, the rest taken as default),
    backend and model files: then every value shown is the one used."""
    try:
        config = HarvestConfig(**{k: setup[k] for k in SETTINGS if setup.get(k) is not None})
        digest = model_digest([setup["detector_sha256"], setup["embedder_sha256"]])
        return config.content_hash(setup["backend"], digest) == setup["config_hash"]
    except (KeyError, ValueError, TypeError):
        return False


def _yaml_str(value: str) -> str:
    return json.dumps(value)        # a JSON string is a valid YAML double-quoted scalar


def _table(header: list[str], rows: list[list]) -> list[str]:
    def cell(v) -> str:
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows])


def _read_shards(fs, root: str) -> dict[str, tuple[dict, object]]:
    """title_id -> (file metadata, Arrow schema) of every shard, read from the footers."""
    out = {}
    for tid, path in sorted(storage.list_shards(fs, root).items()):
        with fs.open(path, "rb") as f:
            schema = pq.read_schema(f)
        out[tid] = (S.read_metadata(schema), schema)
    return out


def shard_holdings(fs, root: str) -> dict:
    """What the shards really hold: ``shards``, ``bytes`` (files), ``crops`` (face images),
    ``crop_bytes`` (their column's size on disk, from the footers) and ``crop_titles`` (titles
    with at least one face image), ``crop_modes`` (the ``--crops`` modes recorded)."""
    out = dict(shards=0, bytes=0, crops=0, crop_bytes=0, crop_titles=0, crop_modes=set())
    for path in storage.list_shards(fs, root).values():
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            md = pf.metadata
            out["crop_modes"].add(str(S.read_metadata(pf.schema_arrow).get("crops", "?")))
            crop_bytes = sum(md.row_group(g).column(c).total_compressed_size
                             for g in range(md.num_row_groups) for c in range(md.num_columns)
                             if md.row_group(g).column(c).path_in_schema.split(".")[0] == "crops")
            positions = pf.read(columns=["crop_positions"]).column("crop_positions")
            crops = int(pc.sum(pc.list_value_length(positions)).as_py() or 0)
        out["shards"] += 1
        out["bytes"] += int(fs.size(path))
        out["crops"] += crops
        out["crop_bytes"] += crop_bytes if crops else 0
        out["crop_titles"] += bool(crops)
    return out


def personal_data(held: dict, n_sources: int) -> list[str]:
    """The lines of the consent section that say what personal data the shards hold."""
    images = (f"{held['crops']} face images (aligned JPEG crops cut from the video frames, "
              f"{human_size(held['crop_bytes'])}, in {held['crop_titles']} title(s)), "
              if held["crops"] else "")
    lines = [f"This dataset holds personal data of the real people who appear in the source "
             f"videos: {images}face embeddings, face boxes and facial landmarks, with the names of the "
             f"{n_sources} source video(s) they come from (see Sources). Face images and face "
             "embeddings are biometric personal data; processed to identify people they are "
             "special-category personal data under GDPR art. 9 (and under similar laws "
             "elsewhere). With the source URIs, tracks can be traced back to the people in "
             "the videos.", ""]
    if held["crops"]:
        modes = ", ".join(f"`--crops {m}`" for m in sorted(held["crop_modes"]))
        lines += [f"The face images are stored because the harvest ran with {modes} (`harvest "
                  "run` stores a sample of crops per track by default). To harvest without face "
                  "images, run `harvest run ... --crops none` (the embeddings remain biometric "
                  "data, the boxes and landmarks personal data).", ""]
    else:
        lines += ["The shards hold no face image (harvested with `--crops none`).", ""]
    return lines


def front_matter(*, license: str, n_tracks: int, pretty_name: str) -> str:
    lines = ["---", f"license: {license}", "task_categories:"]
    lines += [f"- {t}" for t in TASK_CATEGORIES]
    lines += ["size_categories:", f"- {size_category(n_tracks)}",
              f"pretty_name: {_yaml_str(pretty_name)}", "tags:"]
    lines += [f"- {t}" for t in TAGS]
    lines += ["configs:", "- config_name: default", "  data_files:", "  - split: train",
              f"    path: {storage.SHARDS_DIR}/*{storage.SHARD_SUFFIX}", "---"]
    return "\n".join(lines)


@dataclass
class _Output:
    """What the card reads of a harvest output, once."""
    root: str
    records: dict
    shards: dict             # title_id -> (metadata, schema)
    held: dict               # shard_holdings
    done: list
    failed: list
    totals: dict


def _read_output(url: str) -> _Output:
    fs, root = storage.open_fs(url)
    records = dict(sorted(storage.read_records(fs, root).items()))
    done = [r for r in records.values() if r.get("status") == S.STATUS_DONE]
    failed = [r for r in records.values() if r.get("status") != S.STATUS_DONE]
    return _Output(root, records, _read_shards(fs, root), shard_holdings(fs, root), done, failed,
                   {k: sum(int(r.get(k) or 0) for r in done) for k in S.COUNT_FIELDS})


def build_card(url: str, *, license: str = "other", pretty_name: str | None = None,
               contact: str | None = None) -> str:
    """The dataset card (markdown with YAML front matter) of the harvest output at ``url``."""
    o = _read_output(url)
    name = pretty_name or f"movieface harvest {posixpath.basename(o.root)}"
    setups = _setups(o.shards)
    out = [front_matter(license=license, n_tracks=o.totals["tracks"], pretty_name=name), "",
           f"# {name}", "",
           "Face tracks harvested from videos by `movieface` (`harvest run`), one Parquet shard "
           "per title and one row per face track, with weak labels mined from the videos "
           "themselves (Multi-Face): cannot-links between tracks that share a frame, three "
           "hard-positive tracklets per track and a hard negative per track. There are no "
           "identity labels. This card was written by `harvest card` from the manifest and the "
           "shard metadata.", ""]
    out += _contents(o) + _sources(o) + _configuration(setups) + _models(setups, o.held, license)
    out += _schema_section(o.shards) + LIMITATIONS
    out += _consent(o.held, len(o.records), contact or "the publisher of this dataset")
    return "\n".join(out)


def _contents(o: _Output) -> list[str]:
    held, totals = o.held, o.totals
    out = ["## Contents", ""]
    out += _table(["measure", "value"], [
        ["titles", len(o.records)], ["titles done", len(o.done)], ["titles failed", len(o.failed)],
        *[[k.replace("_", " "), totals[k]] for k in S.COUNT_FIELDS],
        ["face embeddings", totals["faces"]], ["face images", held["crops"]],
        ["face image bytes", held["crop_bytes"]], ["shards", held["shards"]],
        ["shard bytes", held["bytes"]]])
    return out + ["", "Counts are the sums over done titles of the manifest records "
                  "(`manifest.jsonl`); `tracks` is the number of rows in `shards/`; there is one "
                  "face embedding per face. Face images (aligned JPEG crops) and sizes are read "
                  f"from the shards: {human_size(held['bytes'])} in all, "
                  f"{human_size(held['crop_bytes'])} of them face images.", ""]


def _sources(o: _Output) -> list[str]:
    rows = []
    for tid, r in o.records.items():
        meta = o.shards.get(tid, ({}, None))[0]
        size = f"{meta['width']}x{meta['height']}" if "width" in meta else None
        rows.append([f"`{tid}`", posixpath.basename(str(r.get("source") or "")), r.get("status"),
                     *[r.get(k) for k in S.COUNT_FIELDS], size, meta.get("fps"),
                     r.get("error")])
    return ["## Sources", "", *_table(["title_id", "source file", "status", "frames", "faces",
                                       "tracks", "valid tracks", "cannot-link pairs", "size",
                                       "fps", "error"], rows), ""]


def _setups(shards: dict) -> dict[str, tuple[dict, list[str]]]:
    """The distinct harvest setups of the shards -> (setup, its title ids)."""
    setups: dict[str, tuple[dict, list[str]]] = {}
    for tid, (meta, _) in shards.items():
        setup = {k: meta.get(k) for k in SETUP_FIELDS}
        setups.setdefault(json.dumps(setup, sort_keys=True), (setup, []))[1].append(tid)
    return setups


def _configuration(setups: dict) -> list[str]:
    out = ["## Harvest configuration", ""]
    if not setups:
        out += ["No shard has been written yet.", ""]
    for setup, tids in setups.values():
        if len(setups) > 1:
            out += [f"Titles: {', '.join(f'`{t}`' for t in tids)}", ""]
        out += _table(["field", "value"], [[k, f"`{setup[k]}`"] for k in SETUP_FIELDS])
        out += [""]
        if default_config_matches(setup):
            fields = [f for f in dataclasses.fields(HarvestConfig)
                      if f.name not in ("backend", "models")]
            values = {k: setup[k] for k in SETTINGS if setup.get(k) is not None}
            out += [f"The config hash `{setup['config_hash']}` is that of these settings "
                    "(`harvest/config.py` `HarvestConfig`; checked by recomputing the hash):", ""]
            out += _table(["setting", "value"],
                          [[f.name, values.get(f.name, f.default)] for f in fields])
        else:
            out += [f"The config hash `{setup['config_hash']}` covers every `HarvestConfig` "
                    "setting, the backend, the model files' sha256 and the pipeline version; "
                    "some settings differ from the defaults and only their hash is recorded."]
        out += [""]
    return out


def _models(setups: dict, held: dict, license: str) -> list[str]:
    out = ["## Model files and licences", ""]
    models = sorted({(s["backend"], slot, s[f"{slot}_file"], s[f"{slot}_sha256"])
                     for s, _ in setups.values() for slot in ("detector", "embedder")})
    out += _table(["backend", "role", "file", "sha256", "licence"],
                  [[b, model_role(slot, f), f, f"`{sha}`", model_licence(b, f)]
                   for b, slot, f, sha in models])
    held_images = (f"no full frames, but {held['crops']} face images cut from them (aligned "
                   "JPEG crops), besides boxes, landmarks, embeddings and mined constraints"
                   if held["crops"] else
                   "no frames and no face images, only boxes, landmarks, embeddings and mined "
                   "constraints")
    return out + ["", "## Licence", "",
                  f"Licence field: `{license}`. The shards hold embeddings and detections "
                  "computed by the models above, so the licences of those weights (table above) "
                  "bind their use as well. The source videos keep their own copyright; this "
                  f"dataset holds {held_images}.", ""]


def _schema_section(shards: dict) -> list[str]:
    dim_schema = next(iter(shards.values()))[1] if shards else S.shard_schema(0)
    out = ["## Schema", "",
           "One row per face track (N = faces in the track, D = embedding dimension). "
           "Rows are in ascending `track_id`; `cannot_link` and `hard_negative` refer to "
           "`track_id`s of the same title.", ""]
    out += _table(["column", "Arrow type", "description"],
                  [[f"`{f.name}`", f"`{f.type}`" if shards else f"`{f.type}`".replace("[0]", "[D]"),
                    S.COLUMN_DESCRIPTIONS.get(f.name, "")] for f in dim_schema])
    return out + ["", f"Each shard's Parquet file metadata has a `{S.METADATA_KEY.decode()}` key "
                  "(JSON) with the title's source URI, fps, size, decode geometry, shot boundaries "
                  "and the harvest setup above.", ""]


LIMITATIONS = [
    "## Known limitations", "",
    "- Weak labels only: cannot-links say two faces in one frame are different people; "
    "nothing says which tracks of different shots are the same person.",
    "- Tracks are built by box overlap inside a shot; a track can switch identity when "
    "faces cross, and a person leaving and re-entering gives several tracks.",
    "- Small, profile, occluded or blurred faces are missed or kept as invalid tracks "
    "(`is_valid = false`, never mined): filter on `is_valid` for training.",
    "- Embeddings depend on the backend; D differs between backends, so shards of "
    "different backends do not load as one table.",
    "- The detector and recogniser were trained on data with unknown demographic "
    "balance; accuracy may differ between groups of people.",
    "- Failed titles (see Sources) have no shard.", ""]


def _consent(held: dict, n_titles: int, who: str) -> list[str]:
    return ["## Consent and personal data", "", *personal_data(held, n_titles),
            "- Intended use: research on face clustering and video understanding (training and "
            "evaluating clustering heads on weak labels), within the rights to the source videos.",
            "- Do not use it to identify, track or profile private individuals, for surveillance, "
            "or to infer sensitive attributes.",
            f"- Removal: anyone who appears in a source video can ask {who} to remove it. A "
            "title is removed by deleting `shards/<title_id>.parquet` and "
            "`manifest/<title_id>.json`, removing the video from the harvest input, and "
            "running `harvest card` again; a person is removed from every title by `people "
            "remove` (by id, name or photo), which rewrites the shards, the manifest and this "
            "card and logs the request in `takedown/audit.jsonl`.",
            "- No consent of the people shown has been collected by this tool; publishers must "
            "establish a legal basis for processing before publishing.", ""]


def card_main(url: str, out: str | None = None, **kwargs) -> int:
    """Write the card of ``url`` to ``out`` (default: README.md at the output root)."""
    fs, root = storage.open_fs(url)
    if not fs.exists(root):
        print(f"harvest card: {url} does not exist")
        return 1
    text = build_card(url, **kwargs).encode()
    if out is None:
        storage.write_atomic(fs, posixpath.join(root, CARD_FILE), text)
        print(posixpath.join(url.rstrip("/"), CARD_FILE))
    else:
        out_fs, out_path = storage.open_fs(out)
        storage.write_atomic(out_fs, out_path, text)
        print(out)
    return 0
