"""Miners against brute-force references and the Multi-Face definitions."""
from itertools import combinations

import numpy as np
import pytest

from harvest.miners import mine_tracklets
from harvest.vectors import l2_normalize
from miner_reference import TrackSet, adjacency, cannot_link_pairs, hard_negatives, tracklets


def random_tracks(rng, n_tracks=8, frames=60, dim=16, valid_p=0.8):
    frame_idx, emb = [], []
    for _ in range(n_tracks):
        start = rng.integers(0, frames - 5)
        stop = rng.integers(start + 3, frames + 1)
        f = np.sort(rng.choice(np.arange(start, stop), size=rng.integers(3, stop - start + 1),
                               replace=False))
        frame_idx.append(f)
        emb.append(l2_normalize(rng.normal(size=(len(f), dim)) + rng.normal(size=dim) * 3))
    valid = rng.random(n_tracks) < valid_p
    return TrackSet(frame_idx, emb, valid)


@pytest.mark.parametrize("seed", range(5))
def test_cannot_link_matches_brute_force(seed):
    ts = random_tracks(np.random.default_rng(seed))
    got = {tuple(p) for p in cannot_link_pairs(ts)}
    want = {(i, j) for i, j in combinations(range(len(ts)), 2)
            if ts.is_valid[i] and ts.is_valid[j]
            and set(ts.frame_idx[i]) & set(ts.frame_idx[j])}
    assert got == want


def test_cannot_link_ignores_invalid_and_disjoint_tracks():
    e = l2_normalize(np.eye(3, 4))
    ts = TrackSet([np.array([0, 1]), np.array([1, 2]), np.array([5, 6])],
                  [e[:2], e[1:], e[:2]], np.array([True, False, True]))
    assert cannot_link_pairs(ts).shape == (0, 2)


def brute_tracklets(emb, n=3):
    """Direct transcription of methods.md section 0 (hard positives)."""
    N = len(emb)
    k = N // n
    D = np.array([[np.linalg.norm(a - b) for b in emb] for a in emb])
    best, a, p1 = -1, 0, 0
    for i in range(N):
        for j in range(N):
            if D[i, j] > best:
                best, a, p1 = D[i, j], i, j
    pool = list(range(N))
    groups = []
    for t in range(n):
        seed = a if t == 0 else (p1 if t == 1 and p1 in pool else max(pool, key=lambda i: D[a, i]))
        take = sorted(pool, key=lambda i: D[seed, i])[:k]
        pool = [i for i in pool if i not in take]
        groups.append(sorted(take))
    return groups


@pytest.mark.parametrize("N", [3, 4, 7, 12, 31])
def test_tracklets_match_brute_force(N):
    rng = np.random.default_rng(N)
    emb = l2_normalize(rng.normal(size=(N, 8)))
    tl = mine_tracklets(emb, 3)
    assert tl.members == brute_tracklets(emb)
    k = N // 3
    assert all(len(m) == k for m in tl.members)
    assert len(set(sum(tl.members, []))) == 3 * k            # disjoint
    np.testing.assert_allclose(np.linalg.norm(tl.vectors, axis=1), 1.0, atol=1e-5)
    for v, m in zip(tl.vectors, tl.members):
        np.testing.assert_allclose(v, l2_normalize(emb[m].mean(0)), atol=1e-5)


def test_tracklets_anchor_and_first_positive_are_the_farthest_pair():
    emb = l2_normalize(np.array([[1, 0], [0.9, 0.1], [0.7, 0.7], [0, 1], [-0.1, 1], [0.5, 0.8]]))
    tl = mine_tracklets(emb, 3)
    assert 0 in tl.members[0] and 4 in tl.members[1]      # unit(0) and the most rotated vector


def test_short_tracks_get_no_tracklets():
    emb = l2_normalize(np.eye(2, 4))
    tl = mine_tracklets(emb, 3)
    assert tl.vectors is None and tl.members == []


@pytest.mark.parametrize("seed", range(3))
def test_hard_negative_is_nearest_cannot_linked_mean(seed):
    ts = random_tracks(np.random.default_rng(seed), valid_p=1.0)
    links = adjacency(cannot_link_pairs(ts), len(ts))
    tls = tracklets(ts, 3)
    anchors = np.stack([t.vectors[0] for t in tls])
    hn = hard_negatives(ts, links, anchors)
    for t in range(len(ts)):
        if not links[t]:
            assert hn[t] == -1
            continue
        d = {o: np.linalg.norm(ts.mean_embeddings[o] - anchors[t]) for o in links[t]}
        assert hn[t] in links[t] and d[hn[t]] == min(d.values())


def test_reference_track_set_rejects_bad_tracks():
    e = l2_normalize(np.eye(2, 4))
    with pytest.raises(ValueError, match="strictly increasing"):
        TrackSet([np.array([2, 1])], [e], np.array([True]))
    with pytest.raises(ValueError, match="unit-norm"):
        TrackSet([np.array([1, 2])], [e * 2], np.array([True]))


def matrix_tracklets(emb, n=3):
    """The brute-force definition on the full N x N distance matrix (the miner before it went
    blockwise): first maximum in row-major order, stable sort for the nearest k."""
    N = len(emb)
    k = N // n
    dist = np.linalg.norm(emb[:, None, :] - emb[None, :, :], axis=-1)
    a, p1 = np.unravel_index(np.argmax(dist), dist.shape)
    pool = np.ones(N, bool)
    members = []
    for t in range(n):
        seed = a if t == 0 else (p1 if t == 1 and pool[p1] else
                                 np.flatnonzero(pool)[np.argmax(dist[a, pool])])
        cand = np.flatnonzero(pool)
        take = cand[np.argsort(dist[seed, cand], kind="stable")[:k]]
        pool[take] = False
        members.append(sorted(int(i) for i in take))
    return members


def tie_prone(rng, N, D):
    """Few distinct directions, repeated and quantised: many exactly equal distances."""
    base = l2_normalize(np.round(rng.normal(size=(max(2, N // 4), D))))
    return base[rng.integers(0, len(base), N)]


@pytest.mark.parametrize("block", [1, 3, 512])
@pytest.mark.parametrize("seed", range(12))
def test_blockwise_tracklets_equal_the_matrix_definition(seed, block, monkeypatch):
    import harvest.miners.hard_positive as hp
    monkeypatch.setattr(hp, "BLOCK_ROWS", block)
    rng = np.random.default_rng(seed)
    for N in (3, 4, 5, 6, 9, 17, 40):
        for D in (2, 3, 16):
            for emb in (l2_normalize(rng.normal(size=(N, D))), tie_prone(rng, N, D),
                        l2_normalize(np.ones((N, D)))):       # all faces identical
                got = mine_tracklets(emb, 3)
                assert got.members == matrix_tracklets(emb), (N, D)


def test_farthest_pair_on_a_large_track_matches_the_matrix():
    from harvest.miners.hard_positive import farthest_pair
    rng = np.random.default_rng(7)
    emb = l2_normalize(rng.normal(size=(600, 64)) + rng.normal(size=64) * 4)
    dist = np.linalg.norm(emb[:, None, :] - emb[None, :, :], axis=-1)
    a, p1, row = farthest_pair(emb, block=100)
    assert (a, p1) == np.unravel_index(np.argmax(dist), dist.shape)
    np.testing.assert_array_equal(row, dist[a])
    assert mine_tracklets(emb, 3).members == matrix_tracklets(emb)


@pytest.mark.parametrize("seed", range(5))
def test_valid_links_from_co_occurrence_equal_cannot_link_miner(seed):
    from harvest.miners import valid_links
    ts = random_tracks(np.random.default_rng(seed))
    partners = [{o for o in range(len(ts)) if o != t
                 and set(ts.frame_idx[t]) & set(ts.frame_idx[o])} for t in range(len(ts))]
    assert valid_links(partners, ts.is_valid) == adjacency(cannot_link_pairs(ts), len(ts))
