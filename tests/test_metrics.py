"""Metrics and clustering against hand-computed examples (methods.md 1.7)."""
import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from training.clustering import hac
from training.evaluation import metrics

Y = [1] * 5 + [2] * 10 + [3] * 5
C1 = [1, 1, 1, 2, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 2]
C2 = [1, 1, 1, 2, 2, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2]


def unit(*a):
    a = np.asarray(a)
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def test_nmi_and_wcp_methods_examples():
    assert metrics.nmi(Y, C1) == pytest.approx(0.108908, abs=1e-6)
    assert metrics.wcp(Y, C1) == pytest.approx(0.55)
    assert metrics.nmi(Y, C2) == pytest.approx(0.253294, abs=1e-6)
    assert metrics.wcp(Y, C2) == pytest.approx(0.60)
    assert metrics.nmi(Y, C1) == pytest.approx(
        normalized_mutual_info_score(Y, C1, average_method="arithmetic"))


def test_bcubed_oci_pcr_by_hand():
    y = ["a", "a", "a", "b", "b"]
    c = [1, 1, 2, 2, 2]
    # precision per item: a1,a2: 2/2; a3: 1/3; b1,b2: 2/3 -> (1+1+1/3+2/3+2/3)/5
    p, r, f = metrics.bcubed(y, c)
    assert p == pytest.approx((1 + 1 + 1 / 3 + 2 / 3 + 2 / 3) / 5)
    # recall per item: a1,a2: 2/3; a3: 1/3; b1,b2: 2/2
    assert r == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 + 1) / 5)
    assert f == pytest.approx(2 * p * r / (p + r))
    assert metrics.overclustering_index(y, c) == pytest.approx((2 + 1) / 2)
    s = metrics.clustering_scores(y, c)
    assert (s["n_clusters"], s["n_identities"], s["pcr"], s["n_tracks"]) == (2, 2, 1.0, 5)
    assert metrics.wcp(y, c) == pytest.approx(4 / 5)
    perfect = metrics.clustering_scores(y, [7, 7, 7, 9, 9])
    for key in ("nmi", "v_measure", "bcubed_f1", "wcp"):
        assert perfect[key] == pytest.approx(1.0)


def test_tpr_at_fpr_by_hand():
    # 4 points, labels a a b b: positives (0,1),(2,3); negatives the other 4 pairs.
    emb = unit(0, 0.1, 1.0, 2.5)
    y = ["a", "a", "b", "b"]
    # cos: (0,1) .995 pos; (2,3) .0707 pos; negatives (0,2) .54, (1,2) .62, (0,3) -.80, (1,3) -.86
    # at FPR 0.1 (< first negative step 0.25) only the top positive is above every negative;
    # the second positive (.07) needs the threshold below two negatives: FPR 0.5.
    assert metrics.tpr_at_fpr(emb, y, 0.1) == pytest.approx(0.5)
    assert metrics.tpr_at_fpr(emb, y, 0.49) == pytest.approx(0.5)
    assert metrics.tpr_at_fpr(emb, y, 0.5) == pytest.approx(1.0)
    # groups: only within-group pairs count -> one positive pair per group, no negatives
    assert np.isnan(metrics.tpr_at_fpr(emb, y, 0.1, groups=[0, 0, 1, 1]))


def test_hac_threshold_methods_examples():
    t = 0.820420
    assert list(hac.hac_threshold(unit(0, 0.5, 2.0, 2.6), t)) == [1, 1, 2, 2]
    np.testing.assert_allclose(hac.dendrogram(unit(0, 0.5, 2.0, 2.6))[:, 2],
                               [0.244835, 0.349329, 3.713778], atol=1e-6)
    assert list(hac.hac_threshold(unit(0, 1.2, 2.0, 3.0), t)) == [3, 1, 1, 2]
    np.testing.assert_allclose(hac.dendrogram(unit(0, 1.2, 2.0, 3.0))[:, 2],
                               [0.606587, 2.454404, 3.979985], atol=1e-6)


def test_hac_k_threshold_for_k_and_ap():
    x = unit(0, 0.05, 0.1, 2.0, 2.05, 4.0)
    for k in (1, 2, 3, 6):
        assert len(set(hac.hac_k(x, k))) == k
        assert len(set(hac.hac_threshold(x, hac.threshold_for_k(x, k, "average"),
                                             "average"))) == k
    labels = hac.affinity_propagation(x)
    assert labels[0] == labels[1] == labels[2] != labels[3]


def test_label_metrics_hold_no_dense_table_at_corpus_scale():
    """A pooled corpus of 1M tracks in 50K identities and 60K clusters: the contingency table
    would be 24 GB dense; the metrics use its non-zero cells only (memory O(N))."""
    import tracemalloc
    from training.evaluation.metrics import bcubed, nmi, overclustering_index, wcp
    rng = np.random.default_rng(0)
    y = rng.integers(0, 50_000, 1_000_000)
    c = (y + (rng.random(len(y)) < 0.1) * rng.integers(1, 10_000, len(y))) % 60_000
    tracemalloc.start()
    p, r, f = bcubed(y, c)
    scores = (nmi(y, c), wcp(y, c), overclustering_index(y, c))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 400 * 2**20, peak / 2**20                      # MiB
    assert 0.8 < p <= 1 and 0.8 < r <= 1 and 0 < scores[0] <= 1 and 0.85 < scores[1] <= 1
    assert 2 < scores[2] < 4                                     # ~2 stray tracks per identity
