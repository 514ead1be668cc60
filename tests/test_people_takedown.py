"""`people search --photo` and `people remove --photo --threshold` on a real harvest (identities
recur across titles): the photo's person ranks first; after the takedown no track of the corpus
is within the threshold of the photo, the harvest validates, only the affected shards changed,
the audit log names them, the person is gone from the store and a build finds nothing new."""
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import FACE_PACK, need
from test_methods_e2e import harvest_once


@pytest.fixture(scope="module")
def harvested(tmp_path_factory, ray_cluster):
    need(FACE_PACK)
    return harvest_once(tmp_path_factory)


def copy_output(src, dst):
    """A harvest output copied elsewhere, its records pointing at the copy's shards."""
    from harvest.dataset import storage
    shutil.copytree(src, dst)
    for f in os.listdir(dst / storage.RECORDS_DIR):
        p = dst / storage.RECORDS_DIR / f
        rec = json.loads(p.read_text())
        rec["shard_path"] = rec["shard_path"].replace(str(src), str(dst))
        p.write_text(json.dumps(rec, sort_keys=True) + "\n")
    fs, root = storage.open_fs(str(dst))
    storage.write_manifest(fs, root, storage.read_records(fs, root))
    return dst


def shard_bytes(out) -> dict:
    d = out / "shards"
    return {f: (d / f).read_bytes() for f in os.listdir(d)}


def people(*argv) -> int:
    from training.people.cli import main
    return main([str(a) for a in argv])


def test_photo_search_then_takedown_by_photo(harvested, tmp_path, capsys):
    from harvest.faces.photo import embed_photo
    from harvest.samples import write_photos
    from harvest.dataset.validate import validate_output
    from training.cli import _track_identities
    root, _ = harvested
    out = copy_output(root / "harvest", tmp_path / "harvest")
    store = tmp_path / "people"
    assert people("build", "--shards", out / "shards", "--output", store) == 0
    photos = write_photos(str(tmp_path / "photos"))
    ids = _track_identities(str(out / "shards"), str(root / "videos" / "labels.csv"))
    who = max(set(ids.values()), key=lambda i: len({t for (t, _), x in ids.items() if x == i}))
    photo = photos[int(who[2:])]
    capsys.readouterr()
    assert people("search", "--photo", photo, "--output", store, "--models", FACE_PACK) == 0
    lines = capsys.readouterr().out.splitlines()
    top_person = int(lines[1].split()[2])
    got = {}
    for f in os.listdir(store / "assignments"):
        t = pq.read_table(store / "assignments" / f)
        got.update({(a, b): c for a, b, c in zip(*(t[k].to_pylist() for k in (
            "title_id", "track_id", "person_id")))})
    theirs = [got[k] for k, x in ids.items() if x == who and k in got]
    assert top_person == max(set(theirs), key=theirs.count)      # the photo's person first
    before = shard_bytes(out)
    threshold = 0.6
    assert people("remove", "--photo", photo, "--threshold", threshold, "--models", FACE_PACK,
                  "--shards", out / "shards", "--output", store, "--request-id", "REQ-1") == 0
    report = validate_output(str(out))
    assert report["ok"], report
    q, _ = embed_photo(photo, FACE_PACK, "insightface")
    after = shard_bytes(out)
    changed = {f for f in after if after[f] != before[f]}
    assert changed
    for f in after:
        t = pq.read_table(out / "shards" / f, columns=["mean_embedding"])
        m = np.stack(t["mean_embedding"].to_numpy(zero_copy_only=False))
        assert (m @ q < threshold).all(), f                       # nothing close remains
    log = [json.loads(x) for x in (out / "takedown" / "audit.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["request_id"] == "REQ-1"
    assert {f"{t}.parquet" for t, v in log[0]["titles"].items() if v["removed"]} == changed
    assert "embedding" not in json.dumps(log)
    rows = pq.read_table(store / "people.parquet").to_pylist()
    assert top_person not in [r["person_id"] for r in rows]
    capsys.readouterr()                          # the store follows the new shards
    assert people("build", "--shards", out / "shards", "--output", store) == 0
    assert "0 new title(s)" in capsys.readouterr().out
