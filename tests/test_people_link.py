"""training/people/link.py against brute force: the calibrated cut, assignment to existing
people, grouping (one unit per title per person, centroid linkage above the cut), determinism,
approximate neighbours against exact ones, and a synthetic corpus recovered."""
import numpy as np

from training.people import link as L


def corpus(n_id=40, titles=30, per=8, dim=32, noise=0.2, seed=0):
    rng = np.random.default_rng(seed)
    centres = L.unit(rng.standard_normal((n_id, dim)))
    who = np.concatenate([rng.choice(n_id, per, replace=False) for _ in range(titles)])
    title = np.repeat(np.arange(titles), per)
    x = L.unit(centres[who] + noise * rng.standard_normal((len(who), dim)) / np.sqrt(dim) * 3)
    return L.Units(x * 2.0, np.full(len(who), 2), title), who


def test_calibrate():
    neg = np.linspace(0, 1, 101)
    assert np.isclose(L.calibrate(neg, quantile=0.9, prior=0.5, prior_weight=0, floor=0), 0.9)
    assert np.isclose(L.calibrate(neg, quantile=0.9, prior=0.5, prior_weight=101, floor=0), 0.7)
    assert L.calibrate(np.zeros(0), prior=0.5, floor=0.35) == 0.5      # nothing: the prior
    assert L.calibrate(neg - 2, floor=0.35) == 0.35                     # never below the floor


def test_knn_hnsw_agrees_with_exact():
    rng = np.random.default_rng(3)
    x = L.unit(rng.standard_normal((3000, 32))).astype(np.float32)
    se, re_ = L.knn(x, x[:300], 10, index="exact")
    brute = np.argsort(-(x[:300] @ x.T), axis=1, kind="stable")[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(re_, brute)]) == 1.0
    sa, ra = L.knn(x, x[:300], 10, index="hnsw")
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ra, re_)]) >= 0.95


def test_group_invariants_and_determinism():
    units, who = corpus()
    tau = 0.5
    labels, sims = L.group(units, tau)
    again, _ = L.group(units, tau)
    assert (labels == again).all()
    assert labels[0] == 0 and (np.diff(np.maximum.accumulate(labels)) <= 1).all()  # by first
    for g in np.unique(labels):
        rows = np.flatnonzero(labels == g)
        assert len(set(units.titles[rows])) == len(rows)          # one unit per title
    cent = L.unit(np.stack([units.sums[labels == g].sum(0) for g in np.unique(labels)]))
    assert np.allclose((cent[labels] * units.centroids).sum(1), sims, atol=1e-5)
    from sklearn.metrics import normalized_mutual_info_score
    assert normalized_mutual_info_score(who, labels) > 0.95
    assert len(np.unique(labels)) <= 1.1 * len(np.unique(who))


def test_assign_brute_force():
    units, who = corpus(seed=1)
    first = units.titles < 20
    rest = L.Units(units.sums[~first], units.weights[~first], units.titles[~first])
    labels, _ = L.group(L.Units(units.sums[first], units.weights[first], units.titles[first]),
                        0.5)
    people = np.stack([units.sums[first][labels == g].sum(0) for g in np.unique(labels)])
    taken = [set(units.titles[first][labels == g]) for g in np.unique(labels)]
    got, sims = L.assign(people, taken, rest, 0.5, index="exact")
    # brute force: candidates by descending similarity, one unit per (person, title)
    s = rest.centroids @ L.unit(people).T
    want = np.full(len(rest), -1)
    used = {(p, t) for p, ts in enumerate(taken) for t in ts}
    k = min(L.DEFAULTS["k"], len(people))
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    cand = sorted(((-s[q, p], q, p) for q in range(len(rest)) for p in top[q] if s[q, p] >= 0.5))
    for _, q, p in cand:
        if want[q] < 0 and (p, rest.titles[q]) not in used:
            want[q] = p
            used.add((p, rest.titles[q]))
    assert (got == want).all()
    assert (sims[got >= 0] >= 0.5).all()


def test_link_keeps_existing_rows_and_numbers_new_people_after_them():
    units, who = corpus(seed=2)
    people = L.unit(np.random.default_rng(0).standard_normal((5, units.sums.shape[1])))
    rows, sims, n_new = L.link(people, [set() for _ in range(5)], units, 0.5)
    assert rows.min() >= 0 and rows.max() == 5 + n_new - 1
    assert set(rows[rows >= 5]) == set(range(5, 5 + n_new))
