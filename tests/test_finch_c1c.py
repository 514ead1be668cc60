"""FINCH and C1C: methods.md 6.3 vectors, a dense brute-force FINCH against the blocked one,
C1C constraint invariants and the track-level entry point."""
import numpy as np
import pytest
import scipy.sparse as sp

import training.clustering.finch as finch_mod
from training.clustering.c1c import c1c, c1c_tracks, track_constraints
from training.clustering.finch import finch, first_neighbours, longest_edge

X = np.array([[x, 1] for x in (0, 0.3, 1.8, 1.2, 1.5, 6.0, 6.4, 7.9, 7.2, 7.4)])
Z = np.array([[x, 1] for x in (0, 1, 3, 4, 10, 11, 13, 14, 30, 31, 33, 34)])
TRACKS = [(0, 1), (1, 2), (3, 4), (5, 6), (6, 7), (8, 9)]


def cols(r):
    return [list(c) for c in r.partitions.T]


# ---------------------------------------------------------------- methods.md 6.3
def test_finch_vectors():
    r = finch(X, "euclidean", ensure_early_exit=True)
    assert cols(r) == [[0, 0, 1, 1, 1, 2, 2, 3, 3, 3]] and r.counts == [4]
    r = finch(X, "euclidean", ensure_early_exit=False)
    assert cols(r) == [[0, 0, 1, 1, 1, 2, 2, 3, 3, 3], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]]
    assert r.counts == [4, 2]
    r = finch(Z, "euclidean", ensure_early_exit=True)
    assert cols(r) == [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]] and r.counts == [6]
    r = finch(Z, "euclidean", ensure_early_exit=False)      # the 1-cluster round is dropped
    assert r.counts == [6, 3] and cols(r)[1] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    for weighted in (True, False):
        r = finch(X, "euclidean", True, weighted=weighted)
        assert cols(r) == [[0, 0, 1, 1, 1, 2, 2, 3, 3, 3]]


def test_finch_cap_plain_and_reference_weighted():
    kappa, dist = first_neighbours(X, "euclidean")
    # methods.md: the longest edge, 7.9-7.2 sharing the neighbour 7.4
    assert longest_edge(X, kappa, dist, "euclidean", weighted=False) == pytest.approx(0.7)
    # the reference doubles the mutual pair 6.0-6.4 (entry 2 of (P+I)(P+I)^T)
    assert longest_edge(X, kappa, dist, "euclidean", weighted=True) == pytest.approx(0.8)


def test_finch_req_clust():
    r = finch(X, "euclidean", ensure_early_exit=False, req_clust=3)
    assert list(r.req) == [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]      # 6.2-7.5 merged (1.3 < 1.35)
    assert list(finch(X, "euclidean", True, req_clust=4).req) == cols(r)[0]
    assert len(set(finch(Z, "euclidean", True, req_clust=2).req)) == 2
    with pytest.raises(ValueError):
        finch(X, "euclidean", True, req_clust=7)


def test_c1c_vectors():
    r = c1c(X)
    assert cols(r) == [[0, 0, 1, 1, 1, 2, 2, 3, 3, 3]] and r.counts == [4]
    r = c1c(X, must_link=TRACKS)
    assert cols(r) == [[0, 0, 0, 1, 1, 2, 2, 2, 3, 3], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]]
    assert r.counts == [4, 2]
    r = c1c(X, must_link=TRACKS, cannot_link=[(0, 3)])                   # tracks 0 and 1 co-occur
    assert cols(r) == [[0, 0, 0, 1, 1, 2, 2, 2, 3, 3], [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]]
    assert r.counts == [4, 3]
    chain = np.array([[0, 1], [0.2, 1], [0.45, 1], [0.75, 1]])
    r = c1c(chain, cannot_link=[(0, 3)])                   # partition 0 is not repaired (6.3)
    assert cols(r) == [[0, 0, 0, 0]] and r.counts == [1]


# ---------------------------------------------------------------- brute force
def dense_finch(x, metric, early_exit, weighted):
    """FINCH from the formulas with full matrices: A = (P+I)(P+I)^T, zero diagonal."""
    from scipy.spatial.distance import cdist

    def graph(m):
        d = cdist(m, m, metric)
        np.fill_diagonal(d, np.inf)
        p = np.zeros((len(m), len(m)))
        p[np.arange(len(m)), d.argmin(1)] = 1
        a = (p + np.eye(len(m))) @ (p + np.eye(len(m))).T
        np.fill_diagonal(a, 0)
        np.fill_diagonal(d, 0)
        return a, d

    def comps(adj):
        n = len(adj)
        lab = -np.ones(n, int)
        c = 0
        for s in range(n):
            if lab[s] < 0:
                stack, lab[s] = [s], c
                while stack:
                    v = stack.pop()
                    for w in np.flatnonzero(adj[v] | adj[:, v]):
                        if lab[w] < 0:
                            lab[w] = c
                            stack.append(w)
                c += 1
        return lab, c

    def length(a, d):
        return d * (a if weighted else (a > 0))

    a, d = graph(x)
    labels, count = comps(a > 0)
    cap = length(a, d).max() if early_exit else None
    parts, counts = [labels], [count]
    while True:
        means = np.stack([x[labels == k].mean(0) for k in range(count)])
        a, d = graph(means)
        adj = a > 0
        if cap is not None:
            adj &= length(a, d) <= cap
        u, new = comps(adj)
        if new == 1 or counts[-1] - new < 1:
            break
        labels, count = u[labels], new
        parts.append(labels)
        counts.append(count)
        if counts[-2] - new == 1:
            break
    return np.column_stack(parts), counts


@pytest.mark.parametrize("seed", range(6))
def test_finch_matches_dense_brute_force(seed, monkeypatch):
    monkeypatch.setattr(finch_mod, "BLOCK_BYTES", 8 * 7 * 150)   # 7-row blocks: many blocks
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(int(rng.integers(3, 9)), 6)) * 3
    x = centres[rng.integers(0, len(centres), int(rng.integers(40, 150)))] + rng.normal(size=(1, 6))
    x = x + rng.normal(size=x.shape)
    for metric in ("euclidean", "cosine"):
        for early in (True, False):
            for weighted in (True, False):
                want_p, want_c = dense_finch(x, metric, early, weighted)
                got = finch(x, metric, early, weighted=weighted)
                assert got.counts == want_c
                np.testing.assert_array_equal(got.partitions, want_p)


def test_first_neighbours_blocked_with_cannot_links(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 5))
    pairs = rng.integers(0, 200, (300, 2))
    cannot = sp.csr_matrix((np.ones(300, bool), (pairs[:, 0], pairs[:, 1])), shape=(200, 200))
    cannot = (cannot + cannot.T).astype(bool).tocsr()
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    d[cannot.toarray()] = 1000.0
    np.fill_diagonal(d, 1000.0)
    monkeypatch.setattr(finch_mod, "BLOCK_BYTES", 8 * 200 * 13)
    kappa, dist = first_neighbours(x, "euclidean", cannot, diag=1000.0)
    np.testing.assert_array_equal(kappa, d.argmin(1))
    np.testing.assert_allclose(dist, d.min(1))


# ---------------------------------------------------------------- C1C invariants
def tracks_and_links(seed, n_ids=6, n_tracks=30):
    """Synthetic title: tracks of 3-9 faces around an identity centre; co-occurring tracks are
    always different identities."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, 16)) * 1.5
    ident = rng.integers(0, n_ids, n_tracks)
    sizes = rng.integers(3, 10, n_tracks)
    faces = np.concatenate([centres[i] + rng.normal(size=(s, 16)) for i, s in zip(ident, sizes)])
    track_of_face = np.repeat(np.arange(n_tracks), sizes)
    links = [[] for _ in range(n_tracks)]
    for a in range(n_tracks):
        for b in range(a + 1, n_tracks):
            if ident[a] != ident[b] and rng.random() < 0.2:
                links[a].append(100 + b)
                links[b].append(100 + a)
    return faces, track_of_face, [100 + t for t in range(n_tracks)], links, ident


@pytest.mark.parametrize("seed", range(5))
def test_c1c_tracks_never_merge_co_occurring_tracks(seed):
    faces, tof, ids, links, ident = tracks_and_links(seed)
    r = c1c_tracks(faces, tof, ids, links)
    assert len(set(r.partitions[:, 0])) == len(ids)                      # partition 0 = tracks
    for k in range(r.partitions.shape[1]):
        p = r.partitions[:, k]
        first = {t: p[tof == t][0] for t in range(len(ids))}
        assert all((p[tof == t] == first[t]).all() for t in range(len(ids)))   # tracks kept whole
        for t, ls in enumerate(links):
            assert all(first[t] != first[o - 100] for o in ls)
        if k:                                                             # nested partitions
            prev = r.partitions[:, k - 1]
            assert all(len(set(p[prev == c])) == 1 for c in set(prev))
    assert r.counts == sorted(r.counts, reverse=True)
    req = c1c_tracks(faces, tof, ids, links, req_clust=len(set(ident))).req
    assert len(set(req)) == len(set(ident))


def test_c1c_req_clust_relaxes_when_every_merge_is_cannot_linked():
    x = np.array([[0.0, 0], [0, 1], [5, 5]])
    cl = [(0, 1), (0, 2), (1, 2)]
    r = c1c(x, must_link=[(0, 0), (1, 1), (2, 2)], cannot_link=cl, req_clust=2)
    assert r.counts == [3]                      # no constrained merge happens on its own
    assert list(r.req) == [0, 0, 1]            # relaxed: the closest pair merges


def test_track_constraints_are_linear_chains():
    tof = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    must, cannot = track_constraints(tof, [10, 11, 12], [[11, 99], [10], []])
    assert must.tolist() == [[0, 1], [1, 2], [3, 4], [5, 6], [6, 7], [7, 8]]
    assert cannot.tolist() == [[0, 3]]         # unknown track id 99 ignored, each pair once


def test_c1c_min_cut_splits_a_first_neighbour_chain():
    # four 2-face tracks whose means form the 6.3 chain 0, 0.2, 0.45, 0.75; the must-links are
    # 1.0 long, so the cap lets the whole chain join in round 1, but tracks 0 and 3 co-occur.
    x = np.array([[m, s] for m in (0, 0.2, 0.45, 0.75) for s in (-0.5, 0.5)])
    must = [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert c1c(x, must).counts == [4]                          # unconstrained: all in one, dropped
    r = c1c(x, must, cannot_link=[(0, 6)])
    # the cut removes the weakest capacity (1.01 * 0.45 - length): the longest link, 2-3
    assert cols(r) == [[0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 0, 0, 0, 0, 1, 1]] and r.counts == [4, 2]


def test_a_registered_neighbour_search_is_used_by_finch_and_c1c():
    """The neighbour-search seam (``training.clustering.finch.SEARCHES``): a search registered by name is
    the one FINCH and C1C call (``search`` parameter), and the exact search's results stay."""
    from training.clustering.methods import Job, get
    from training.clustering.title_tracks import TitleTracks
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    faces = np.repeat(centres, 12, axis=0) + 0.05 * rng.normal(size=(48, 16))
    tof = np.repeat(np.arange(16), 3)
    means = np.stack([faces[tof == t].mean(0) for t in range(16)])
    title = TitleTracks("t", np.arange(16), means.astype(np.float32), [[] for _ in range(16)],
                        _faces=(faces, tof))
    calls = []

    def counting(*args, **kwargs):
        calls.append(len(args[0]))
        return finch_mod.first_neighbours(*args, **kwargs)
    finch_mod.register_search("counting", counting)
    try:
        for name in ("finch", "c1c"):
            method = get(name)
            exact = method(Job(title, means))
            calls.clear()
            counted = method(Job(title, means, params={"search": "counting"}))
            assert calls, name
            assert (counted == exact).all()
        with pytest.raises(ValueError, match="unknown neighbour search"):
            get("finch")(Job(title, means, params={"search": "nope"}))
    finally:
        finch_mod.SEARCHES.pop("counting")
