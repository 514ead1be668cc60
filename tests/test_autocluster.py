"""`auto` (training/clustering/autocluster.py), c1c's merge cap and the calibrated confidence, against
brute-force references; memory of the title adaptation pinned."""
import tracemalloc

import numpy as np
import pytest

from training.clustering import autocluster, confidence
from training.clustering.c1c import c1c_tracks, track_diameters
from training.clustering.finch import pairwise


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def title(seed=0, people=4, tracks=12, faces=(5, 40), dim=16, spread=0.35):
    """Faces (F, dim) grouped by track, track row of each face, identity per track."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((people, dim)))
    who = np.r_[np.arange(people), rng.integers(0, people, tracks - people)]
    n = rng.integers(*faces, size=tracks)
    tof = np.repeat(np.arange(tracks), n)
    offset = spread * rng.standard_normal((tracks, dim))          # the shot: pose, light
    f = unit(centres[who[tof]] + offset[tof] + 0.2 * rng.standard_normal((len(tof), dim)))
    return f.astype(np.float32), tof, who


def reference_wccn(f, tof, n_tracks, shrink):
    """The adaptation written out on whole matrices."""
    g = unit(unit(f.astype(np.float64)) - unit(f.astype(np.float64)).mean(0))
    m = np.stack([g[tof == t].mean(0) for t in range(n_tracks)])
    r = g - m[tof]
    w = r.T @ r / len(g)
    w += shrink * np.trace(w) / len(w) * np.eye(len(w))
    vals, vecs = np.linalg.eigh(w)
    return unit(m @ vecs @ np.diag(vals ** -0.5) @ vecs.T)


def test_adaptation_equals_the_reference_in_any_chunking(monkeypatch):
    f, tof, _ = title()
    want = reference_wccn(f, tof, 12, 0.3)
    np.testing.assert_allclose(autocluster.adapted_tracks(f, tof, 12, "wccn", 0.3), want, atol=1e-9)
    monkeypatch.setattr(autocluster, "CHUNK", 7)                    # many chunks, same answer
    np.testing.assert_allclose(autocluster.adapted_tracks(f, tof, 12, "wccn", 0.3), want, atol=1e-9)
    means = unit(np.stack([unit(f.astype(np.float64))[tof == t].mean(0) for t in range(12)]))
    np.testing.assert_allclose(autocluster.adapted_tracks(f, tof, 12, "none"), means, atol=1e-9)
    with pytest.raises(ValueError):
        autocluster.adapted_tracks(f, tof, 12, "pca")


def test_stopping_similarity_leans_on_the_prior_only_without_evidence():
    s = autocluster.stopping_similarity
    assert s(np.array([]), prior=0.35) == 0.35
    neg = np.linspace(0.0, 1.0, 101)
    assert s(neg, 0.7, 0.0, prior=0.35, prior_weight=0) == pytest.approx(0.7)
    assert s(neg, 0.7, 0.05, prior=0.35, prior_weight=0) == pytest.approx(0.75)
    assert s(neg[:5], 0.5, 0.0, prior=0.5, prior_weight=5) == pytest.approx((5 * 0.02 + 5 * 0.5) / 10)
    assert s(-neg, 0.7, prior=0.0, floor=0.1) == 0.1        # people far apart: never below floor


def test_auto_never_joins_cannot_links_and_merges_monotonically():
    f, tof, who = title(seed=3, people=5, tracks=20)
    emb = autocluster.adapted_tracks(f, tof, 20)
    pairs = np.array([(i, j) for i in range(20) for j in range(i + 1, 20)
                      if who[i] != who[j] and (i + j) % 3 == 0])
    counts = []
    for offset in (-0.3, -0.1, 0.0, 0.1, 0.3):
        labels, tau = autocluster.auto_cluster(emb, pairs, offset=offset)
        assert labels.shape == (20,) and labels.min() == 0
        assert (labels[pairs[:, 0]] != labels[pairs[:, 1]]).all()
        counts.append(len(set(labels)))
    assert counts == sorted(counts) and counts[0] < counts[-1]      # a lower height merges more
    assert autocluster.auto_cluster(emb[:1], pairs[:0])[0].tolist() == [0]


def test_adaptation_memory_is_flat_in_faces():
    """200,000 faces (D = 128, 100 MB as float32): the adaptation's own allocations stay a few
    chunks (8 MB each), not copies of the faces."""
    rng = np.random.default_rng(0)
    f = rng.standard_normal((200_000, 128)).astype(np.float32)
    tof = np.sort(rng.integers(0, 2000, len(f)))
    tracemalloc.start()
    autocluster.adapted_tracks(f, tof, 2000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.5 * f.nbytes, peak / 2 ** 20      # one float64 copy would be 200 MB


def test_track_diameters_against_brute_force():
    f, tof, _ = title(seed=1, tracks=6, faces=(2, 30))
    d = track_diameters(f, tof)
    for t in range(6):
        x = f[tof == t].astype(np.float64)
        assert d[t] == pytest.approx(pairwise(x, x, "euclidean").max(), abs=1e-9)
    capped = track_diameters(f, tof, max_faces=4)                    # a lower bound when sampled
    assert (capped <= d + 1e-12).all() and (capped > 0).all()


def test_c1c_cap_is_the_widest_track_not_the_longest_step():
    """Tracks drifting slowly (small steps, wide span): the chain cap forbids every merge of two
    tracks of one person; the reference's cap (every pair of a track's faces must-linked) lets
    them merge, and cannot-links still hold."""
    rng = np.random.default_rng(0)
    a, b, c = np.linalg.qr(rng.standard_normal((8, 3)))[0].T
    s = np.linspace(0, 1, 20)[:, None]
    tracks = [unit(a + 0.8 * s * b), unit(a + 0.4 * b + 0.2 * s * c),   # person 1: a wide track
              unit(-a + 0.8 * s * b), unit(-a + 0.4 * b + 0.2 * s * c)]  # person 2 alike
    f = np.concatenate(tracks)
    tof = np.repeat(np.arange(4), 20)
    links = [[2], [], [0], []]                                       # tracks 0 and 2 co-occur
    chain = c1c_tracks(f, tof, np.arange(4), links, cap="chain")
    diameter = c1c_tracks(f, tof, np.arange(4), links, cap="diameter")
    first = np.arange(4) * 20
    assert len(set(chain.partitions[:, -1][first])) == 4            # one person per track
    lab = diameter.partitions[:, -1][first]
    assert lab[0] == lab[1] and lab[2] == lab[3] and lab[0] != lab[2]
    with pytest.raises(ValueError):
        c1c_tracks(f, tof, np.arange(4), links, cap="widest")


def test_confidence_is_a_monotone_probability_and_correctness_counts_both_mistakes():
    x = np.linspace(-1, 1, 9)
    p = confidence.calibrate(x)
    assert ((p > 0) & (p < 1)).all() and (np.diff(p) > 0).all()
    who = np.array(["a", "a", "a", "b", "b", "b", "c"], object)
    lab = np.array([0, 0, 1, 0, 2, 2, 2])     # a split (track 2 alone), a b with the a's, c with b's
    assert confidence.correct(who, lab).tolist() == [True, True, False, False, True, True, False]
    rows = confidence.reliability(np.array([0.1, 0.6, 0.95, 0.99]), np.array([0, 1, 1, 0], bool))
    assert [r[2] for r in rows] == [1, 1, 0, 0, 2] and rows[-1][4] == 0.5
    fitted = confidence.fit(np.r_[np.zeros(20), np.ones(20)], np.r_[np.zeros(20), np.ones(20)] > 0)
    assert fitted["slope"] > 0
