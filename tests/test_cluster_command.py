"""`cluster` end to end on a real labelled harvest (shared with test_methods_e2e.py): one output
file per title, every valid track labelled exactly once, co-occurring tracks never in one
cluster, resumable (a second run skips done titles, a config change redoes them)."""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import FACE_PACK, need
from test_methods_e2e import harvest_once


@pytest.fixture(scope="module")
def harvested(tmp_path_factory, ray_cluster):
    need(FACE_PACK)
    return harvest_once(tmp_path_factory)


def _outputs(out):
    return {p: pq.read_table(os.path.join(out, p)) for p in sorted(os.listdir(out))
            if p.endswith(".parquet")}


def test_cluster_labels_every_valid_track_once_and_resumes(harvested, tmp_path, capsys):
    from training.cli import cluster_main
    from training.clustering.cluster_titles import DEFAULT_METHOD, META_KEY
    from training.data import list_shards
    root, title_of = harvested
    shards, out = str(root / "harvest" / "shards"), str(tmp_path / "clusters")
    assert cluster_main(["--shards", shards, "--output", out]) == 0
    files = _outputs(out)
    assert sorted(files) == sorted(f"{t}.parquet" for t in title_of.values())
    assert not [p for p in os.listdir(out) if not p.endswith(".parquet")]   # no temp files left
    n_pairs = 0
    for path in list_shards(shards):
        shard = pq.read_table(path, columns=["title_id", "track_id", "is_valid", "cannot_link"])
        valid = shard.filter(shard["is_valid"])
        t = files[f"{valid['title_id'][0].as_py()}.parquet"]
        assert t.column_names == ["title_id", "track_id", "cluster_id", "confidence"]
        ids = t["track_id"].to_pylist()
        assert sorted(ids) == sorted(valid["track_id"].to_pylist()) and len(set(ids)) == len(ids)
        label = dict(zip(ids, t["cluster_id"].to_pylist()))
        for tid, links in zip(valid["track_id"].to_pylist(), valid["cannot_link"].to_pylist()):
            for other in links:
                n_pairs += 1
                assert label[tid] != label[other], (tid, other)       # never joined
        meta = json.loads(t.schema.metadata[META_KEY])
        assert meta["config"]["method"] == DEFAULT_METHOD
        sizes = np.bincount(t["cluster_id"].to_numpy())
        assert meta["cluster_sizes"] == sizes.tolist() and sum(sizes) == len(ids)
        assert list(sizes) == sorted(sizes, reverse=True)            # id 0 = the largest
        conf = t["confidence"].to_numpy()
        assert ((conf > 0) & (conf < 1)).all()                           # a probability
        from training.clustering.confidence import calibrate                         # a singleton: score 1
        assert np.allclose(conf[sizes[t["cluster_id"].to_numpy()] == 1], calibrate(1.0), atol=1e-5)
    assert n_pairs > 0
    capsys.readouterr()
    before = {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in files}
    assert cluster_main(["--shards", shards, "--output", out]) == 0          # second run: skip
    assert "0 done, 3 skipped" in capsys.readouterr().out
    assert before == {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in files}
    # another method is another config: only the named title (by file name) is redone
    assert cluster_main(["--shards", shards, "--output", out, "--method", "finch",
                         "--titles", "title_1.mp4"]) == 0
    assert "1 done, 0 skipped" in capsys.readouterr().out
    redone = f"{title_of['title_1.mp4']}.parquet"
    meta = json.loads(pq.read_table(os.path.join(out, redone)).schema.metadata[META_KEY])
    assert meta["config"]["method"] == "finch"
    assert before[redone] != os.stat(os.path.join(out, redone)).st_mtime_ns


def test_cluster_refuses_methods_that_need_labels(harvested, tmp_path, capsys):
    from training.cli import cluster_main
    root, _ = harvested
    shards = str(root / "harvest" / "shards")
    assert cluster_main(["--shards", shards, "--output", str(tmp_path / "o"),
                         "--method", "hac-threshold"]) == 2
    assert "needs a threshold" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
