"""Shard reading, title split, per-head samples and batches on synthetic shards."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from harvest.schema import read_metadata, shard_schema
from training.data import (build_samples, collate, list_shards, make_batches, read_tracks,
                           shard_batches, shard_info, split_titles)
from training.synthetic import SyntheticSpec, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("syn")), 4, SyntheticSpec(dim=16), seed=3)


def test_synthetic_shards_follow_the_contract(dataset):
    files = list_shards(dataset["shards"])
    assert len(files) == 4
    for f in files:
        t = pq.read_table(f)
        assert t.schema.remove_metadata().equals(shard_schema(16))
        assert read_metadata(t.schema)["embedding_dim"] == 16
    info = shard_info(dataset["shards"])
    assert {i["title_id"] for i in info} == {"title000", "title001", "title002", "title003"}


def test_split_titles_disjoint_and_deterministic():
    titles = [f"t{i}" for i in range(50)]
    tr, va = split_titles(titles, val_fraction=0.2)
    assert set(tr).isdisjoint(va) and set(tr) | set(va) == set(titles)
    assert (tr, va) == split_titles(list(reversed(titles)), val_fraction=0.2)
    assert 3 <= len(va) <= 20
    assert split_titles(["a", "b"], val_fraction=0.0)[1]          # never empty with 2 titles
    tr, va = split_titles(titles, ["t7", "t3"])
    assert va == ["t3", "t7"] and set(tr) == set(titles) - {"t3", "t7"}
    with pytest.raises(ValueError):
        split_titles(titles, ["nope"])


def test_samples_per_kind(dataset):
    t = read_tracks(dataset["shards"], engine="arrow")
    valid = np.asarray(t["is_valid"]) & np.asarray(t["tracklets"].is_valid())
    views = build_samples(t, "views")
    assert len(views) == valid.sum() and views.arrays["views"].shape[1:] == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(views.arrays["views"], axis=-1), 1, atol=1e-5)
    trip = build_samples(t, "triplets")
    assert 0 < len(trip) < len(views)
    # the negative is the hard-negative track's anchor tracklet
    rows = {(r["title_id"], r["track_id"]): r for r in t.to_pylist()}
    for s in range(0, len(trip), 7):
        title = sorted({r[0] for r in rows})[trip.arrays["title"][s]]
        hn = rows[(title, int(trip.arrays["track_id"][s]))]["hard_negative"]
        np.testing.assert_allclose(trip.arrays["negative"][s], rows[(title, hn)]["tracklets"][0],
                                   atol=1e-6)


def test_cluster_batches_keep_cannot_link_and_mask_matches(dataset):
    t = read_tracks(dataset["shards"], engine="arrow")
    s = build_samples(t, "clusters")
    batches = make_batches(s, 40, np.random.default_rng(0), 2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(s)))
    a = s.arrays
    key = {(int(a["title"][i]), int(a["track_id"][i])): i for i in range(len(s))}
    rows = {(r["title_id"], r["track_id"]): r for r in t.to_pylist()}
    titles = sorted({r[0] for r in rows})
    n_pairs = 0
    for idx in batches:
        allowed = collate(s, idx)["allowed"].numpy()
        for i, gi in enumerate(idx):
            cl = rows[(titles[a["title"][gi]], int(a["track_id"][gi]))]["cannot_link"]
            want = {key[(a["title"][gi], c)] for c in cl if (a["title"][gi], c) in key}
            got = {int(idx[j]) for j in np.flatnonzero(allowed[i])}
            assert got == want & set(idx.tolist())
            n_pairs += len(got)
    assert n_pairs > 0.8 * len(a["cl_idx"])   # contiguous-in-time batches keep most partners


def test_shard_batches_equal_per_rank():
    b = [np.arange(i, i + 1) for i in range(7)]
    r0, r1 = shard_batches(b, 0, 2), shard_batches(b, 1, 2)
    assert len(r0) == len(r1) == 3
    with pytest.raises(ValueError):
        shard_batches(b[:1], 0, 2)
