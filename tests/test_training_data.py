"""Shard footers, title split and dealing, per-head samples of title groups, streamed batches."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harvest.dataset.schema import read_metadata, shard_schema
from training.data import (build_samples, collate, deal_titles, iter_titles, list_shards,
                           read_title, shard_info, split_titles, stream_batches)
from training.synthetic import SyntheticSpec, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("syn")), 4, SyntheticSpec(dim=16), seed=3)


def _all(dataset):
    return pa.concat_tables(iter_titles(list_shards(dataset["shards"])))


def test_synthetic_shards_follow_the_contract(dataset):
    files = list_shards(dataset["shards"])
    assert len(files) == 4
    for f in files:
        t = pq.read_table(f)
        assert t.schema.remove_metadata().equals(shard_schema(16))
        assert read_metadata(t.schema)["embedding_dim"] == 16
    info = shard_info(dataset["shards"])
    assert {i["title_id"] for i in info} == {"title000", "title001", "title002", "title003"}
    assert all(i["tracks"] == 60 and i["dim"] == 16 for i in info)


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


def test_deal_titles_partitions_and_balances_tracks():
    rng = np.random.default_rng(0)
    infos = [dict(title_id=f"t{i}", tracks=int(n)) for i, n in enumerate(rng.integers(100, 2000, 41))]
    shares = deal_titles(infos, 3, np.random.default_rng(5))
    ids = [i["title_id"] for s in shares for i in s]
    assert sorted(ids) == sorted(i["title_id"] for i in infos)          # each title once
    loads = [sum(i["tracks"] for i in s) for s in shares]
    assert max(loads) - min(loads) <= 2000                              # within one title
    assert shares == deal_titles(infos, 3, np.random.default_rng(5))    # replayable per epoch
    assert shares != deal_titles(infos, 3, np.random.default_rng(6))
    assert deal_titles(infos, 2) == deal_titles(list(reversed(infos)), 2)


def test_samples_per_kind(dataset):
    t = _all(dataset)
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
    # per title group == whole table: the negative never lives in another title
    per_title = [build_samples(read_title(p), "triplets") for p in list_shards(dataset["shards"])]
    np.testing.assert_array_equal(np.concatenate([s.arrays["negative"] for s in per_title]),
                                  trip.arrays["negative"])
    assert build_samples(t.slice(0, 0), "views", required=False) is None


@pytest.mark.parametrize("kind", ["views", "triplets", "clusters"])
def test_stream_batches_cover_every_sample_once(dataset, kind):
    paths = list_shards(dataset["shards"])
    want = sum(len(build_samples(read_title(p), kind)) for p in paths)
    seen = []
    for pool, idx in stream_batches(iter_titles(paths), kind, 25, np.random.default_rng(0)):
        assert 12 <= len(idx) <= 25
        seen += [(int(pool.arrays["first_frame"][i]), int(pool.arrays["track_id"][i]),
                  pool.arrays["views"][i, 0, 0].item()) for i in idx]
    assert len(seen) == want and len(set(seen)) == want
    tiny = list(stream_batches(iter_titles(paths[:1]), kind, 10_000, np.random.default_rng(0)))
    assert len(tiny) == 1                                   # fewer samples than a batch: one batch


def test_cluster_batches_keep_cannot_link_and_mask_matches(dataset):
    t = _all(dataset)
    rows = {(r["title_id"], r["track_id"]): r for r in t.to_pylist()}
    n_links = sum(len(build_samples(read_title(p), "clusters").arrays["cl_idx"])
                  for p in list_shards(dataset["shards"]))
    n_pairs = 0
    for pool, idx in stream_batches(iter_titles(list_shards(dataset["shards"])), "clusters", 40,
                                    np.random.default_rng(0)):
        allowed = collate(pool, idx)["allowed"].numpy()
        a = pool.arrays
        # batch members by key; a batch may span two titles (track ids differ per title here)
        key = {int(a["track_id"][i]): j for j, i in enumerate(idx)}
        frames = a["first_frame"][idx]
        for j, i in enumerate(idx):
            title = next(tt for (tt, tid) in rows if tid == int(a["track_id"][i]))
            cl = rows[(title, int(a["track_id"][i]))]["cannot_link"]
            want = {key[c] for c in cl if c in key}
            assert set(np.flatnonzero(allowed[j]).tolist()) == want
            n_pairs += len(want)
        assert (np.diff(frames) >= 0).sum() >= len(idx) - 2     # time order (title change: a drop)
    assert n_pairs > 0.8 * n_links       # contiguous-in-time batches keep most partners


def test_supervised_cluster_batches_carry_global_identity_ids(dataset):
    import csv
    with open(dataset["track_labels"]) as f:
        rows = list(csv.DictReader(f))
    names = sorted({r["identity"] for r in rows})
    ids = {(r["title"], int(r["track_id"])): names.index(r["identity"]) for r in rows[::2]}
    seen = {}
    for pool, idx in stream_batches(iter_titles(list_shards(dataset["shards"])), "clusters", 30,
                                    np.random.default_rng(0), identities=ids):
        batch = collate(pool, idx)
        assert "allowed" not in batch                       # supervised: every centroid counts
        for i, label in zip(idx, batch["labels"].tolist()):
            seen[int(pool.arrays["track_id"][i])] = label
    # only labelled tracks, each with its identity's id (track ids differ between these titles)
    want = {tid: label for (_, tid), label in ids.items() if tid in seen}
    assert seen == want and len(seen) > 0.4 * len(ids)
