"""Benchmark: ``people`` at corpus scale: time, peak RSS and quality of the corpus step as the
corpus grows from 10K to 1M synthetic tracks, approximate against exact neighbours, FINCH.

    python bench/people.py [--tracks 10000 100000 1000000] [--dim 128] [--title-tracks 200]
                           [--exact-up-to 100000] [--finch-up-to 10000]

The corpus (:func:`make_corpus`): titles of ``--title-tracks`` tracks; N/20 identities (as in
``bench/cluster.py``); each title a cast of 8-24 of them drawn with Zipf weights (leads recur
in many titles, guests once), its tracks shared by the cast with Zipf weights; shots of 1-3
co-occurring tracks of distinct identities (cannot-links);
a track's mean embedding is unit(identity centre + track offset 0.8 + title shift 0.3 + face
noise 0.5 / sqrt(faces)), offsets relative to a unit centre (D = 128, the face pack's size).

Per size, in a fresh child process (so VmHWM is that size's peak): each title clustered by
``auto``'s rule on its track means centred on the title's mean (constrained average-linkage HAC,
cut calibrated on the title's cannot-links; the per-title Ray task of ``people build``, whose
``auto`` also whitens by the within-track covariance of the faces, which synthetic means lack;
timed as one process), units and negatives, the corpus cut, then the corpus link
(``training/people/link.py``) in two builds: 90% of the titles, then the last 10% added
(ids of the first build checked unchanged). Prints people / identities (PCR), NMI, B-cubed F,
purity (share of people whose tracks are all one identity) and the share of people spanning
titles; up to ``--exact-up-to`` the same link with exact neighbours (partition agreement, ARI,
and recall@k of the approximate neighbour lists); up to ``--finch-up-to`` FINCH on the same
tracks. One JSON line per size. Prints measured figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TRACK_OFFSET, TITLE_SHIFT, FACE_NOISE = 0.8, 0.3, 0.5


def unit(x):
    from harvest.vectors import l2_normalize
    return l2_normalize(x, dtype=None)


def make_corpus(n: int, dim: int, per_title: int, seed: int = 0):
    """-> (means (N, D) float32, identity (N,), title (N,), per title its cannot-link row
    pairs (local rows)). Each title has a cast of 8-24 people drawn from the corpus's N/20
    identities with Zipf weights (leads recur across many titles, guests appear once); a
    title's tracks go to its cast with Zipf weights too (a few leads hold most tracks)."""
    rng = np.random.default_rng(seed)
    n_id = max(n // 20, 2)
    centres = unit(rng.standard_normal((n_id, dim))).astype(np.float32)
    weight = 1.0 / np.arange(1, n_id + 1)
    weight /= weight.sum()
    n_titles = max(1, n // per_title)
    title = np.minimum(np.arange(n) // per_title, n_titles - 1)
    ident = np.empty(n, np.int64)
    shift = TITLE_SHIFT * rng.standard_normal((n_titles, dim)) / np.sqrt(dim)
    pairs = []
    for t in range(n_titles):
        rows = np.flatnonzero(title == t)
        cast = rng.choice(n_id, size=min(int(rng.integers(8, 25)), n_id), replace=False, p=weight)
        w = 1.0 / np.arange(1, len(cast) + 1)
        who = cast[rng.choice(len(cast), size=len(rows), p=w / w.sum())]
        shot = np.repeat(np.arange(len(rows)), rng.integers(1, 4, size=len(rows)))[:len(rows)]
        starts = np.flatnonzero(np.r_[True, shot[1:] != shot[:-1]])
        ends = np.r_[starts[1:], len(rows)]
        p = []
        for s, e in zip(starts, ends):
            if e - s > 1:                               # distinct people in one shot
                k = int(np.flatnonzero(cast == who[s])[0])
                who[s:e] = cast[(k + np.arange(e - s)) % len(cast)]
                p += [(a, b) for a in range(s, e) for b in range(a + 1, e)]
        ident[rows] = who
        pairs.append(np.asarray(p, np.int64).reshape(-1, 2))
    faces = rng.integers(5, 51, size=n)
    means = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        noise = (TRACK_OFFSET * rng.standard_normal((e - s, dim))
                 + FACE_NOISE / np.sqrt(faces[s:e, None]) * rng.standard_normal((e - s, dim)))
        means[s:e] = unit(centres[ident[s:e]] + shift[title[s:e]] + noise / np.sqrt(dim))
    return means, ident, title, pairs


def title_units(means, title, pairs, ident=None):
    """Each title clustered by auto's rule on its means (or, given ``ident``, by the truth:
    the corpus step measured alone) -> (unit of each track (global ids), unit sums, unit
    weights, unit titles, negatives)."""
    from training.clustering.autocluster import auto_cluster
    from training.people.titles import negatives, unit_sums
    unit_of = np.empty(len(means), np.int64)
    sums, weights, titles, negs = [], [], [], []
    base = 0
    for t in range(int(title.max()) + 1):
        rows = np.flatnonzero(title == t)
        x = means[rows]
        if ident is None:                   # auto's "center" adaptation, on track means
            labels, _ = auto_cluster(unit(unit(x) - unit(x).mean(0)), pairs[t])
        else:
            labels = np.unique(ident[rows], return_inverse=True)[1]
        n_units = int(labels.max()) + 1
        unit_of[rows] = base + labels
        sums.append(unit_sums(x, labels, n_units))
        weights.append(np.bincount(labels, minlength=n_units))
        titles.append(np.full(n_units, t))
        negs += negatives(x, labels, pairs[t], n_units)
        base += n_units
    return (unit_of, np.concatenate(sums), np.concatenate(weights), np.concatenate(titles),
            np.asarray(negs, np.float32))


def scores(ident, people, title) -> dict:
    from sklearn.metrics import normalized_mutual_info_score
    from training.evaluation.metrics import bcubed
    _, p = np.unique(people, return_inverse=True)
    order = np.lexsort((ident, p))
    ps, ids = p[order], ident[order]
    cut = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    pure = np.array([len(np.unique(ids[a:b])) == 1 for a, b in zip(cut, np.r_[cut[1:], len(ps)])])
    span = np.array([len(np.unique(title[order][a:b])) > 1
                     for a, b in zip(cut, np.r_[cut[1:], len(ps)])])
    _, _, f = bcubed(ident, p)
    return dict(people=int(p.max()) + 1, identities=int(len(np.unique(ident))),
                pcr=round((p.max() + 1) / len(np.unique(ident)), 3),
                nmi=round(float(normalized_mutual_info_score(ident, p)), 4),
                bcubed_f1=round(float(f), 4), purity=round(float(pure.mean()), 4),
                spanning=round(float(span.mean()), 4))


def peak_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) / 1024 for x in f if x.startswith("VmHWM:"))


def one_size(n: int, dim: int, per_title: int, exact_up_to: int, finch_up_to: int,
             units: str = "auto") -> dict:
    from training.people import link as L
    out = dict(tracks=n, dim=dim, units_from=units)
    t0 = time.perf_counter()
    means, ident, title, pairs = make_corpus(n, dim, per_title)
    out["generate_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    unit_of, sums, weights, utitle, negs = title_units(means, title, pairs,
                                                       ident if units == "truth" else None)
    out.update(titles=int(title.max()) + 1, units=len(weights),
               title_step_s=round(time.perf_counter() - t0, 1))
    tau = L.calibrate(negs)
    split = int(0.9 * (title.max() + 1))
    first = utitle < split
    t0 = time.perf_counter()
    rows1, _, n1 = L.link(np.zeros((0, dim)), [], L.Units(sums[first], weights[first],
                                                          utitle[first]), tau)
    out["link_first_s"] = round(time.perf_counter() - t0, 1)
    psums = np.zeros((n1, dim))
    np.add.at(psums, rows1, sums[first])
    ptitles = [set() for _ in range(n1)]
    for r, t in zip(rows1, utitle[first]):
        ptitles[r].add(int(t))
    t0 = time.perf_counter()
    rows2, _, n2 = L.link(psums, ptitles, L.Units(sums[~first], weights[~first],
                                                  utitle[~first]), tau)
    out["link_added_s"] = round(time.perf_counter() - t0, 1)
    person = np.empty(len(weights), np.int64)
    person[first], person[~first] = rows1, rows2
    out["ids_stable"] = bool((person[first] == rows1).all())
    out["peak_after_link_mib"] = round(peak_mib())
    out.update(tau=round(tau, 4), joined_existing=round(float((rows2 < n1).mean()), 3)
               if len(rows2) else None, **scores(ident, person[unit_of], title))
    if n <= exact_up_to:
        from sklearn.metrics import adjusted_rand_score
        u = L.Units(sums, weights, utitle)
        t0 = time.perf_counter()
        exact, _, _ = L.link(np.zeros((0, dim)), [], u, tau, index="exact")
        out["link_exact_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        approx, _, _ = L.link(np.zeros((0, dim)), [], u, tau, index="hnsw")
        out["link_hnsw_s"] = round(time.perf_counter() - t0, 1)
        out["ari_hnsw_vs_exact"] = round(float(adjusted_rand_score(exact, approx)), 4)
        q = u.centroids[np.random.default_rng(1).choice(len(u), min(2000, len(u)), False)]
        _, er = L.knn(u.centroids, q, 10, index="exact")
        _, ar = L.knn(u.centroids, q, 10, index="hnsw")
        out["recall_at_10"] = round(float(np.mean([len(set(a) & set(e)) / len(e)
                                                   for a, e in zip(ar, er)])), 4)
    if n <= finch_up_to:
        from sklearn.metrics import normalized_mutual_info_score
        from training.clustering.finch import finch
        t0 = time.perf_counter()
        res = finch(means, "cosine")
        out.update(finch_s=round(time.perf_counter() - t0, 1),
                   finch_clusters=int(res.partitions[:, -1].max()) + 1,
                   finch_nmi=round(float(normalized_mutual_info_score(
                       ident, res.partitions[:, -1])), 4))
    out["peak_mib"] = round(peak_mib())            # with the scoring and the comparisons
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tracks", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--title-tracks", type=int, default=200)
    p.add_argument("--exact-up-to", type=int, default=100_000)
    p.add_argument("--finch-up-to", type=int, default=10_000)
    p.add_argument("--units", nargs="+", default=["auto", "truth"], choices=("auto", "truth"),
                   help="title clusters from auto, or the true identities (the corpus step alone)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(one_size(a.tracks[0], a.dim, a.title_tracks, a.exact_up_to,
                                  a.finch_up_to, a.units[0])))
        return
    for n, units in ((n, u) for n in a.tracks for u in a.units):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, __file__, "--child", "--tracks", str(n), "--dim",
                            str(a.dim), "--title-tracks", str(a.title_tracks), "--exact-up-to",
                            str(a.exact_up_to), "--finch-up-to", str(a.finch_up_to),
                            "--units", units],
                           capture_output=True, text=True)
        if r.returncode:
            print(f"{n} tracks: failed ({r.returncode}): {r.stderr.strip()[-400:]}")
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        print(", ".join(f"{k} {v}" for k, v in res.items()))
        print(json.dumps(res))


if __name__ == "__main__":
    main()
