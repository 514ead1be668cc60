"""HAC with cannot-link constraints (training.clustering.hac): scipy without constraints, a brute-force
greedy reference with them, and the invariant that no cluster holds a cannot-linked pair."""
import itertools

import numpy as np
import pytest

from training.clustering.hac import cannot_link_pairs, hac_constrained, hac_k, hac_threshold


def canon(labels):
    """Partition as a set of frozensets (label values do not matter)."""
    out = {}
    for i, c in enumerate(labels):
        out.setdefault(int(c), set()).add(i)
    return {frozenset(s) for s in out.values()}


def unit_rows(rng, n, e=6):
    x = rng.normal(size=(n, e))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_hac(x, cannot, method, k=None, threshold=None):
    """Greedy HAC from the definitions: every step recomputes every cluster distance from the
    point distances (single = min, complete = max, average = mean); a cluster pair holding a
    cannot-linked pair is never merged."""
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    forbidden = {frozenset(p) for p in map(tuple, cannot)}
    clusters = [[i] for i in range(len(x))]
    agg = {"single": np.min, "complete": np.max, "average": np.mean}[method]
    while len(clusters) > (k or 1):
        best = None
        for a, b in itertools.combinations(range(len(clusters)), 2):
            if any(frozenset((p, q)) in forbidden for p in clusters[a] for q in clusters[b]):
                continue
            dist = agg(d[np.ix_(clusters[a], clusters[b])])
            if best is None or dist < best[0]:
                best = (dist, a, b)
        if best is None or (threshold is not None and best[0] > threshold):
            break
        _, a, b = best
        clusters[a] = clusters[a] + clusters[b]
        del clusters[b]
    return {frozenset(c) for c in clusters}


def random_links(rng, n, m):
    p = rng.integers(0, n, (m, 2))
    return p[p[:, 0] != p[:, 1]]


@pytest.mark.parametrize("method", ["single", "complete", "average", "weighted"])
def test_without_constraints_equals_scipy(method):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 8))
    for k in (1, 5, 17):
        assert canon(hac_constrained(x, [], k=k, method=method)) == canon(hac_k(x, k, method))
    for t in (0.5, 1.0, 1.6):
        assert (canon(hac_constrained(x, [], threshold=t, method=method))
                == canon(hac_threshold(x, t, method)))


@pytest.mark.parametrize("method", ["single", "complete", "average"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force(method, seed):
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, 22)
    cannot = random_links(rng, 22, 25)
    for k in (1, 4, 9):
        got = hac_constrained(x, cannot, k=k, method=method)
        assert canon(got) == brute_hac(x, cannot, method, k=k)
    for t in (0.4, 1.0, 2.5):
        got = hac_threshold(x, t, method, cannot_link=cannot)        # the option on the old API
        assert canon(got) == brute_hac(x, cannot, method, threshold=t)


@pytest.mark.parametrize("method", ["single", "complete", "average", "weighted"])
def test_no_cluster_holds_a_cannot_linked_pair(method):
    rng = np.random.default_rng(7)
    x = unit_rows(rng, 300, 4)
    cannot = random_links(rng, 300, 600)
    for labels in (hac_k(x, 3, method, cannot_link=cannot),
                   hac_threshold(x, 10.0, method, cannot_link=cannot)):   # threshold above any
        assert not (labels[cannot[:, 0]] == labels[cannot[:, 1]]).any()
        assert labels.min() == 1
    # and the constraints cost clusters only where they bite: with none, K is met exactly
    assert len(set(hac_k(x, 3, method, cannot_link=np.zeros((0, 2), int)))) == 3


def test_k_is_not_reached_when_every_merge_is_forbidden():
    x = np.eye(3)
    labels = hac_k(x, 1, "average", cannot_link=[(0, 1), (0, 2), (1, 2)])
    assert sorted(labels) == [1, 2, 3]
    labels = hac_k(x, 1, "complete", cannot_link=[(0, 1)])
    assert labels[0] != labels[1] and len(set(labels)) == 2


def test_single_linkage_cannot_chain_through_a_link():
    # 0 - 1 - 2 on a line: single linkage would join all three through 1; 0 and 2 co-occur
    x = np.array([[1.0, 0.0], [1.0, 0.3], [1.0, 0.6]])
    labels = hac_k(x, 1, "single", cannot_link=[(0, 2)])
    assert labels[0] != labels[2] and len(set(labels)) == 2


def test_unsupported_linkage_and_arguments():
    x = np.eye(3)
    with pytest.raises(ValueError):
        hac_k(x, 2, "ward", cannot_link=[(0, 1)])
    with pytest.raises(ValueError):
        hac_constrained(x, [(0, 1)], k=2, threshold=1.0)
    with pytest.raises(ValueError):
        hac_constrained(x, [(0, 5)], k=2)


def test_cannot_link_pairs_from_shard_columns():
    track_ids = [10, 11, 12, 13]
    links = [[11, 12], [10], [10, 99], None]
    assert cannot_link_pairs(track_ids, links).tolist() == [[0, 1], [0, 2]]
    assert cannot_link_pairs(track_ids, [[], [], [], []]).shape == (0, 2)
