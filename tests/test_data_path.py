"""The vectorised data path against a per-track Python reference (the former implementation's
logic), Arrow decoding edge cases, ImpTriplet's lazy ``mean_embedding``, the prefetch thread, the
worker's collated batches, and the frame kinds' miners on neighbour lists against brute force."""
import pickle
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import training.losses.face_distances as fd
import training.losses.siamese_miners as sm
from test_siamese import brute_ssiam, brute_tsiam, pairs_list
from training import registry
from training.columns import HARD_NEGATIVE, MEAN_EMBEDDING
from training.data import (TRIPLETS, VIEW_COLUMNS, Collated, Samples, float_vectors, build_samples,
                           collate, iter_titles, list_shards, means_needed, prefetched,
                           read_title, stream_batches)
from training.losses import tsiam_negative_tracks
from training.synthetic import SyntheticSpec, write_dataset
from training.train import worker_batches


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    # short tracks (< 3 faces: no tracklets) and invalid tracks, so every fallback is exercised
    spec = SyntheticSpec(dim=8, tracks_per_title=50, faces_per_track=(2, 5), invalid_fraction=0.1)
    return write_dataset(str(tmp_path_factory.mktemp("dp")), 3, spec, seed=11)


def _table(dataset):
    return pa.concat_tables(iter_titles(list_shards(dataset["shards"])))


def _reference(table: pa.Table, kind: str) -> dict:
    """Per-track Python transcription of the sample rules (module docstring of training.data)."""
    rows = table.to_pylist()
    keep = [i for i, r in enumerate(rows) if r["is_valid"] and r["tracklets"] is not None]
    titles = sorted({rows[i]["title_id"] for i in keep})
    key_to_sample = {(rows[i]["title_id"], rows[i]["track_id"]): s for s, i in enumerate(keep)}
    key_to_row = {(r["title_id"], r["track_id"]): i for i, r in enumerate(rows)}
    views = np.array([rows[i]["tracklets"] for i in keep], np.float32)
    out = dict(views=views, title=np.array([titles.index(rows[i]["title_id"]) for i in keep]),
               track_id=np.array([rows[i]["track_id"] for i in keep]),
               first_frame=np.array([rows[i]["frame_idx"][0] for i in keep]))
    if kind == "triplets":
        neg, ok = [], []
        for s, i in enumerate(keep):
            h, t = rows[i]["hard_negative"], rows[i]["title_id"]
            if h is not None and (t, h) in key_to_sample:
                neg.append(views[key_to_sample[(t, h)], 0])
            elif h is not None and (t, h) in key_to_row:
                neg.append(np.array(rows[key_to_row[(t, h)]]["mean_embedding"], np.float32))
            else:
                ok.append(False)
                continue
            ok.append(True)
        ok = np.array(ok, bool)
        out = {k: v[ok] for k, v in out.items()}
        out["negative"] = np.array(neg, np.float32)
    if kind == "clusters":
        ptr, idx = [0], []
        for i in keep:
            t = rows[i]["title_id"]
            idx += [key_to_sample[(t, p)] for p in rows[i]["cannot_link"]
                    if (t, p) in key_to_sample]
            ptr.append(len(idx))
        out["labels"] = np.arange(len(keep))
        out["cl_ptr"], out["cl_idx"] = np.array(ptr), np.array(idx, np.int64)
    return out


@pytest.mark.parametrize("kind", ["views", "triplets", "clusters"])
def test_vectorised_samples_match_the_per_track_reference(dataset, kind):
    whole = _table(dataset)
    shuffled = whole.take(pa.array(np.random.default_rng(0).permutation(whole.num_rows)))
    for table in (whole, shuffled, read_title(list_shards(dataset["shards"])[1])):
        got, want = build_samples(table, kind).arrays, _reference(table, kind)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        views = collate(build_samples(table, kind), np.arange(len(want["views"])))["views"]
        assert views.dtype == torch.float32 and views.is_contiguous()
        np.testing.assert_array_equal(views.numpy(), want["views"])
    # the fallbacks happened: negatives taken from a mean, partners dropped (invalid / no tracklets)
    ref = _reference(whole, "triplets")
    rows = whole.to_pylist()
    assert len(ref["views"]) < sum(r["is_valid"] for r in rows)


def test_vectors_decodes_sliced_chunked_and_null_columns():
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(7, 3, 4)).astype(np.float32)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(vals.ravel()), 4)
    outer = pa.FixedSizeListArray.from_arrays(inner, 3)
    np.testing.assert_array_equal(float_vectors(outer, 4), vals)
    np.testing.assert_array_equal(float_vectors(outer.slice(2, 4), 4), vals[2:6])
    chunked = pa.chunked_array([outer.slice(0, 3), outer.slice(3, 4)])
    np.testing.assert_array_equal(float_vectors(chunked, 4), vals)
    with_null = pa.array([v.tolist() if i != 1 else None for i, v in enumerate(vals)],
                         outer.type)
    got = float_vectors(with_null, 4)
    assert got.shape == (7, 3, 4)
    np.testing.assert_array_equal(np.delete(got, 1, 0), np.delete(vals, 1, 0))
    assert np.shares_memory(float_vectors(outer, 4), np.asarray(outer.values.values))   # zero copy


def test_triplets_read_mean_embedding_only_where_a_hard_negative_needs_it(dataset, tmp_path):
    """Without short hard negatives a shard is read without ``mean_embedding`` (a third of its
    bytes); with them it is read (a second read of the file). Samples equal a full read's."""
    short = list_shards(dataset["shards"])               # tracks of 2 faces: no tracklets
    full_length = write_dataset(str(tmp_path), 1, SyntheticSpec(dim=8, tracks_per_title=40,
                                                                faces_per_track=(3, 3)), seed=2)
    read = {p: read_title(p, TRIPLETS.columns) for p in short + list_shards(full_length["shards"])}
    assert [MEAN_EMBEDDING in t.column_names for t in read.values()] == [True] * 3 + [False]
    for path, lazy in read.items():
        whole = read_title(path)
        assert means_needed(whole) == (MEAN_EMBEDDING in lazy.column_names)
        got, want = build_samples(lazy, "triplets").arrays, build_samples(whole, "triplets").arrays
        for k in want:
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)
    with pytest.raises(ValueError, match="mean_embedding"):          # needed, not read
        build_samples(read_title(short[0], VIEW_COLUMNS + (HARD_NEGATIVE,)), "triplets")
    again = pickle.loads(pickle.dumps(TRIPLETS.columns))             # Ray ships the kind
    assert again == TRIPLETS.columns and again.lazy == TRIPLETS.columns.lazy


def test_read_title_sorts_only_unsorted_shards(dataset, tmp_path):
    path = list_shards(dataset["shards"])[0]
    t = pq.read_table(path)
    ids = t["track_id"].to_numpy()
    assert (np.diff(ids) > 0).all()                       # the writer's order
    pq.write_table(t.take(pa.array(np.arange(len(ids))[::-1])), tmp_path / "rev.parquet")
    back = read_title(str(tmp_path / "rev.parquet"))
    np.testing.assert_array_equal(back["track_id"].to_numpy(), ids)
    assert back.equals(read_title(path))


def test_prefetched_keeps_order_raises_and_stops():
    assert list(prefetched(iter(range(50)), 3)) == list(range(50))

    def boom():
        yield 1
        raise RuntimeError("producer failed")
    it = prefetched(boom())
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="producer failed"):
        next(it)

    made = []

    def endless():
        for i in range(10_000):
            made.append(i)
            yield i
    before = threading.active_count()
    it = prefetched(endless(), 2)
    assert [next(it) for _ in range(5)] == list(range(5))
    it.close()                                           # the consumer leaves early
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before             # the producer thread ended
    assert len(made) <= 5 + 2 + 2                          # it stopped, bounded read-ahead


@pytest.mark.parametrize("head", ["bcl", "imptriplet", "mvcorr"])
def test_worker_batches_are_the_stream_collated(dataset, head):
    spec = registry.get(head)
    hp = spec.hparams(batch_size=32)
    paths = list_shards(dataset["shards"])
    infos = [dict(path=p) for p in paths]
    got = list(worker_batches(spec.samples, infos, hp, np.random.default_rng(4)))
    want = [(collate(s, i), len(i)) for s, i in stream_batches(
        iter_titles(paths, spec.samples.columns), spec.samples, 32, np.random.default_rng(4))]
    assert len(got) == len(want) and all(isinstance(b, Collated) for b in got)
    for b, (tensors, n) in zip(got, want):
        assert b.n == n and b.tensors.keys() == tensors.keys()
        for k in tensors:
            assert torch.equal(b.tensors[k], tensors[k]), k
    inline = list(worker_batches(spec.samples, infos, hp, np.random.default_rng(4), prefetch=0))
    assert [b.n for b in inline] == [b.n for b in got]


def test_rows_index_like_the_concatenated_array():
    from training.data import Rows
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 3, 2)), rng.normal(size=(4, 3, 2))
    whole = np.concatenate([a, b[[3, 0, 2]]])
    rows = Rows.concat([a, Rows([b], np.zeros(3, np.int32), np.array([3, 0, 2]))])
    assert len(rows) == 8 and rows.shape == (8, 3, 2)
    idx = np.array([7, 0, 5, 5, 2])
    np.testing.assert_array_equal(rows[idx], whole[idx])
    np.testing.assert_array_equal(rows[idx, 0], whole[idx, 0])
    np.testing.assert_array_equal(rows[6, 1], whole[6, 1])
    np.testing.assert_array_equal(rows[2:6], whole[2:6])
    np.testing.assert_array_equal(np.asarray(rows), whole)
    sub = rows.subset(np.array([6, 5]))                 # only b's rows: a is let go
    assert len(sub.bases) == 1 and sub.bases[0] is b
    np.testing.assert_array_equal(np.asarray(sub), whole[[6, 5]])


# ---------------------------------------------------------------- frame kinds: neighbour lists
def _title(rng, n_frames: int, dim: int, grid: bool) -> dict:
    """One title's faces ``x`` (an integer grid: ties everywhere), ``track`` of each face, track
    ``means`` and ``cannot_link``, and TSiam's relation ``rel`` (n_far 3)."""
    n_tracks = n_frames // 15
    track = np.sort(rng.integers(0, n_tracks, n_frames))
    x = (rng.integers(-2, 3, size=(n_frames, dim)) + track[:, None] * 0.5 if grid
         else rng.normal(size=(n_frames, dim))).astype(np.float64)
    links = [[] for _ in range(n_tracks)]
    for a in range(0, n_tracks - 1, 3):
        links[a].append(a + 1)
        links[a + 1].append(a)
    means = np.stack([x[track == t].mean(0) if (track == t).any() else np.zeros(dim)
                      for t in range(n_tracks)])
    return dict(x=x, track=track, means=means, cannot_link=links,
                rel=tsiam_negative_tracks(means, links, n_far=3))


@pytest.mark.parametrize("seed", range(3))
def test_miners_on_short_neighbour_lists_match_brute_force(seed, monkeypatch):
    """Lists of 4 faces: some frames are answered from them, the others (an answer that may lie
    outside a list) blockwise; pairs are the brute force's, duplicates and ties included."""
    monkeypatch.setattr(fd, "LIST_MIN", 4)
    monkeypatch.setattr(fd, "LIST_DRAWS", 1)
    rng = np.random.default_rng(seed)
    t = _title(rng, 300, 3, grid=True)
    x, track, rel = t["x"], t["track"], t["rel"]
    idx = rng.integers(0, len(x), 150)
    ssiam = sm.FaceDistances(x, draw=150)
    tsiam = sm.FaceDistances(x, draw=150, track=track, negatives=rel)
    assert ssiam.near.face.shape == (300, 4) and ssiam.full is None
    _, sure = sm._ssiam_lists(ssiam, sm._distinct(idx))
    assert sure.any() and not sure.all()                     # both ways were taken
    xs, fr = torch.from_numpy(x[idx]), torch.from_numpy(idx)
    assert pairs_list(sm.ssiam_pairs(xs, 23, fr, ssiam)) == brute_ssiam(x[idx], 23)
    got = sm.tsiam_pairs(xs, torch.from_numpy(track[idx]), rel, fr, 23, tsiam)
    assert pairs_list(got) == brute_tsiam(x[idx], track[idx], rel.toarray(), idx, 23)


def test_a_title_above_the_list_limit_is_mined_per_draw(monkeypatch):
    """Past ``LIST_MAX_FACES`` a title gets no neighbour lists (their O(F^2 D) would cost more
    than mining each draw): no lists, no matrix, and the pairs are still the brute force's."""
    monkeypatch.setattr(fd, "LIST_MAX_FACES", 100)
    rng = np.random.default_rng(3)
    t = _title(rng, 300, 3, grid=True)
    x, track, rel = t["x"], t["track"], t["rel"]
    idx = rng.integers(0, len(x), 150)
    ssiam = sm.FaceDistances(x, draw=150, cache_mb=0)
    tsiam = sm.FaceDistances(x, draw=150, cache_mb=0, track=track, negatives=rel)
    assert ssiam.near is None and ssiam.full is None and tsiam.related is None
    xs, fr = torch.from_numpy(x[idx]), torch.from_numpy(idx)
    assert pairs_list(sm.ssiam_pairs(xs, 23, fr, ssiam)) == brute_ssiam(x[idx], 23)
    got = sm.tsiam_pairs(xs, torch.from_numpy(track[idx]), rel, fr, 23, tsiam)
    assert pairs_list(got) == brute_tsiam(x[idx], track[idx], rel.toarray(), idx, 23)


@pytest.mark.parametrize("head", ["ssiam", "tsiam"])
def test_frame_kinds_mine_from_lists_as_from_the_title_matrix(head):
    """The frame kinds' prepared lists (float32 screening, exact float64 distances) give the
    pairs of the title's whole float64 matrix on real-valued faces, every batch."""
    rng = np.random.default_rng(7)
    t = _title(rng, 900, 16, grid=False)
    x = t["x"].astype(np.float32)
    spec = registry.get(head)
    samples = Samples(spec.samples, dict(x=x, track=t["track"]),
                      dict(means=t["means"], cannot_link=t["cannot_link"], n_pairs=32))
    spec.samples.prepare(samples, dict(draw=300, n_far=3))
    prepared = samples.meta["distances"]
    lists = prepared.near if head == "ssiam" else prepared.related
    assert prepared.full is None and lists is not None
    matrix = sm.FaceDistances(x)
    for _ in range(4):
        idx = rng.integers(0, len(x), 300)
        got = collate(samples, idx)
        lists, samples.meta["distances"] = samples.meta["distances"], matrix
        want = collate(samples, idx)
        samples.meta["distances"] = lists
        for k in want:
            assert torch.equal(got[k], want[k]), k



def test_a_shard_read_in_row_batches_equals_the_whole_read(tmp_path):
    """``read_title`` decodes READ_BATCH_ROWS rows at a time: the same table (and the same lazy
    column) as one whole read, for a shard of several batches and for an empty one."""
    import training.data.shards as shards
    from harvest.dataset.schema import parquet_options
    write_dataset(str(tmp_path), 1, SyntheticSpec(dim=16, tracks_per_title=600,
                                                  faces_per_track=(3, 5)), labels=False)
    path = str(tmp_path / "shards" / "title000.parquet")
    assert pq.ParquetFile(path).metadata.num_rows == 600 > shards.READ_BATCH_ROWS
    kind = registry.get("imptriplet").samples
    got = shards.read_title(path, kind.columns)
    want = pq.read_table(path, columns=list(kind.columns))
    assert got.select(want.column_names).equals(want)
    assert got[0].num_chunks > 1                      # it was read in batches
    lazy = shards.Columns(["track_id"], [(MEAN_EMBEDDING, lambda t: True)])
    assert shards.read_title(path, lazy)[MEAN_EMBEDDING].equals(
        pq.read_table(path, columns=[MEAN_EMBEDDING])[MEAN_EMBEDDING])
    empty = pq.read_table(path).slice(0, 0)
    pq.write_table(empty, tmp_path / "empty.parquet", **parquet_options(empty.schema))
    assert shards.read_title(str(tmp_path / "empty.parquet"), kind.columns).num_rows == 0
