"""Benchmark: clustering time, peak memory and NMI of every registered clustering method
(training/clustering/methods.py) on synthetic titles of 1K, 10K and 100K tracks.

    python bench/cluster.py [--tracks 1000 10000 100000] [--dim 128] [--methods NAME ...]
                            [--budget 300] [--mem-gb 8] [--faces 5 50] [--ann-from 100000]

A title (:func:`make_title`): N tracks of N/20 identities with Zipf-sized casts (a few leads,
many extras); shots of 1-3 co-occurring tracks of distinct identities (cannot-links); 5-50
faces per track; a face is unit(centre + track offset + face noise), with the track offset
(pose, light of a shot) 0.8 and the face noise 0.5 of a unit centre (3% hard faces: 1.5),
so two tracks of one person are at cosine ~0.6 and two people at ~0 (D = 128, the face pack's MobileFaceNet size,
by default); a track's ``mean_embedding`` is the unit mean of its faces. Methods run on the raw
embeddings (no head) as ``evaluate`` / ``cluster`` call them: ``hac-k`` with the true K
(average linkage), ``hac-threshold`` at a complete-linkage cut fitted on the generator (the
midpoint between the 99th percentile of same-person and the 1st percentile of different-
person squared distances, printed), each with and without ``--cannot-link``; ``ap``; ``finch``
and ``c1c`` parameter-free (their last partition). A registered method that needs face crops
(VideoClusterNet) or fails on crop-less synthetic tracks is skipped with the reason.

Each (method, N) runs in a child process that regenerates the title from the seed, so its wall
clock, its peak RSS (VmHWM reset just before the call; the row shows the peak minus the RSS
before it: the call's own memory) and its failures are its own; a child past ``--budget``
seconds is killed. A method holding N x N matrices is not started where they would exceed
``--mem-gb`` ("skipped: N^2 = X GB"), nor one whose time, extrapolated quadratically from the
previous size, exceeds the budget. ``--inline`` runs them all in this process instead (quick
checks, the test).

Exact vs approximate first neighbours (FINCH, C1C) at N >= ``--ann-from``: the platform's
blocked exact search against hnswlib's HNSW graph (Apache-2.0; bench-only, not a platform
dependency), as a ``~hnsw`` row per method, plus HNSW's first-neighbour recall@1 (on 2,000
random queries checked exactly) and its build+query time against the exact search's
(extrapolated from those queries), and the partition agreement (NMI between the exact and
approximate partitions). Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TRACK_OFFSET, FACE_NOISE = 0.8, 0.5
HARD_FACES, HARD_NOISE = 0.03, 1.5       # blurred / profile faces: 3% at 3x the noise
#: bytes per N^2 of the methods that hold N x N matrices (measured order: condensed float64
#: distances + scipy's copy; constrained HAC's distance, bool and temporary matrices; affinity
#: propagation's similarity, availability, responsibility and temporaries)
QUADRATIC_BYTES = {"hac": 16, "hac+cl": 33, "ap": 40}


# ------------------------------------------------------------------------------- one title
def make_title(n: int, dim: int, faces=(5, 50), seed: int = 0, keep_faces: bool = True):
    """-> (TitleTracks of n tracks, (n,) identity of each track). Faces generated in chunks
    (memory: the means, plus the faces only when ``keep_faces``)."""
    from training.clustering.title_tracks import TitleTracks
    rng = np.random.default_rng(seed)
    n_id = max(n // 20, 2)
    centres = _unit(rng.standard_normal((n_id, dim)))
    weight = 1.0 / np.arange(1, n_id + 1)
    ident = rng.choice(n_id, size=n, p=weight / weight.sum())
    shot = np.repeat(np.arange(n), rng.integers(1, 4, size=n))[:n]    # 1-3 tracks per shot
    starts = np.flatnonzero(np.r_[True, shot[1:] != shot[:-1]])
    ends = np.r_[starts[1:], n]
    links = [[] for _ in range(n)]
    for s, e in zip(starts, ends):
        if e - s > 1:
            if len(set(ident[s:e])) < e - s:          # distinct people in one shot
                ident[s:e] = (ident[s] + np.arange(e - s)) % n_id
            for a in range(s, e):
                links[a] = [b for b in range(s, e) if b != a]
    n_faces = rng.integers(faces[0], faces[1] + 1, size=n)
    offset = TRACK_OFFSET * rng.standard_normal((n, dim)) / np.sqrt(dim)
    means = np.empty((n, dim), np.float32)
    kept = []
    for s in range(0, n, 2000):
        e = min(n, s + 2000)
        tof = np.repeat(np.arange(s, e), n_faces[s:e])
        noise = np.where(rng.random(len(tof)) < HARD_FACES, HARD_NOISE, FACE_NOISE)
        f = _unit(centres[ident[tof]] + offset[tof]
                  + noise[:, None] * rng.standard_normal((len(tof), dim)) / np.sqrt(dim))
        f = f.astype(np.float32)
        starts = np.r_[0, np.cumsum(n_faces[s:e])[:-1]]
        means[s:e] = _unit(np.add.reduceat(f, starts, axis=0))
        if keep_faces:
            kept.append(f)
    tof_all = np.repeat(np.arange(n), n_faces)
    loaded = (np.concatenate(kept), tof_all) if keep_faces else None
    title = TitleTracks("synthetic", np.arange(n, dtype=np.int64), means, links,
                        load_faces=lambda: loaded)
    return title, ident


def _unit(x):
    from harvest.vectors import l2_normalize
    return l2_normalize(x, dtype=None)


def fitted_cut(means: np.ndarray, ident: np.ndarray, seed: int = 0, pairs: int = 200_000) -> float:
    """Squared-distance cut midway between the 99th percentile of same-person and the 1st
    percentile of different-person pairs (sampled)."""
    rng = np.random.default_rng(seed + 1)
    i, j = rng.integers(len(means), size=(2, pairs))
    d = 2 - 2 * (means[i] * means[j]).sum(1)
    same = ident[i] == ident[j]
    ok = i != j
    return float((np.percentile(d[same & ok], 99) + np.percentile(d[~same], 1)) / 2)


# ------------------------------------------------------------------------------- approximate NN
def hnsw_first_neighbours(x, metric, cannot=None, diag=np.inf, big=1000.0, k=8):
    """Drop-in for :func:`training.clustering.finch.first_neighbours` from an HNSW graph (hnswlib,
    M = 16, ef 200): the nearest of the k returned that is not the point itself nor cannot-
    linked; rows where none is (or with k too small) fall back to the exact blocked search.
    Distances recomputed exactly (float64)."""
    import hnswlib

    from training.clustering.finch import rowwise
    n = len(x)
    if n <= k + 1:
        from training.clustering.finch import first_neighbours
        return first_neighbours(x, metric, cannot, diag, big)
    index = hnswlib.Index(space="cosine" if metric == "cosine" else "l2", dim=x.shape[1])
    index.init_index(max_elements=n, ef_construction=200, M=16, random_seed=0)
    index.set_num_threads(os.cpu_count() or 1)
    index.add_items(x.astype(np.float32))
    index.set_ef(max(200, k))
    cand, _ = index.knn_query(x.astype(np.float32), k=k)
    cand = cand.astype(np.int64)
    bad = cand == np.arange(n)[:, None]
    if cannot is not None:
        r = np.repeat(np.arange(n), k)
        bad |= np.asarray(cannot[r, cand.ravel()]).reshape(n, k).astype(bool)
    d = np.where(bad, np.inf, rowwise(x, np.repeat(np.arange(n), k), cand.ravel(),
                                      metric).reshape(n, k))
    kappa = cand[np.arange(n), d.argmin(1)]
    dist = d.min(1)
    miss = np.flatnonzero(~np.isfinite(dist))
    if len(miss):
        from training.clustering.finch import pairwise
        dm = pairwise(x[miss], x, metric)
        if cannot is not None:
            blk = cannot[miss].tocoo()
            dm[blk.row, blk.col] = big
        dm[np.arange(len(miss)), miss] = diag
        kappa[miss], dist[miss] = dm.argmin(1), dm.min(1)
    return kappa, dist


def hnsw_params(on: bool) -> dict:
    """The method parameters that make FINCH and C1C search first neighbours with HNSW
    (registered as ``training.clustering.finch.SEARCHES["hnsw"]``); {} = the platform's exact search."""
    if not on:
        return {}
    from training.clustering.finch import register_search
    register_search("hnsw", hnsw_first_neighbours)
    return {"search": "hnsw"}


# ------------------------------------------------------------------------------- one run
def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+)", f.read()).group(1)) / 1024


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_one(method: str, n: int, dim: int, faces, seed: int, cannot_link: bool, hnsw: bool,
            labels_out: str | None) -> dict:
    """One method on one generated title (this process) -> figures."""
    from sklearn.metrics import normalized_mutual_info_score

    from training.clustering import methods
    m = methods.get(method)
    title, ident = make_title(n, dim, faces, seed, keep_faces=m.faces)
    cut = None
    if m.threshold:
        cut = (fitted_cut(title.means, ident, seed), "complete")
    job = methods.Job(title, title.means.astype(np.float64),
                      k=len(np.unique(ident)) if m.k == "required" else None, cut=cut,
                      cannot_link=cannot_link, params=hnsw_params(hnsw))
    before = _rss_mb("VmRSS")
    _reset_peak_rss()
    t0 = time.perf_counter()
    labels = m(job)
    seconds = time.perf_counter() - t0
    peak = _rss_mb("VmHWM")
    if labels_out:
        np.save(labels_out, labels)
    pairs = title.cannot_link_pairs()
    return dict(seconds=seconds, call_peak_mb=peak - before, rss_before_mb=before,
                nmi=float(normalized_mutual_info_score(ident, labels, average_method="arithmetic")),
                clusters=int(labels.max()) + 1, identities=int(len(np.unique(ident))),
                cl_violated=int((labels[pairs[:, 0]] == labels[pairs[:, 1]]).sum()),
                cut=cut[0] if cut else None)


def neighbour_recall(n: int, dim: int, faces, seed: int, queries: int = 2000) -> dict:
    """HNSW first neighbours of all n track embeddings (cosine; build + query time) against the
    exact blocked search for ``queries`` random rows (recall@1 on them; the exact time of all n
    rows extrapolated linearly from them: the blocked search is linear in its query rows)."""
    from training.clustering.finch import pairwise
    title, _ = make_title(n, dim, faces, seed, keep_faces=False)
    x = title.means.astype(np.float64)
    t0 = time.perf_counter()
    approx, d_approx = hnsw_first_neighbours(x, "cosine")
    t_approx = time.perf_counter() - t0
    rows = np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False)
    t0 = time.perf_counter()
    exact, d_exact = np.empty(len(rows), np.int64), np.empty(len(rows))
    for s in range(0, len(rows), 500):
        d = pairwise(x[rows[s:s + 500]], x, "cosine")
        d[np.arange(d.shape[0]), rows[s:s + 500]] = np.inf
        exact[s:s + 500], d_exact[s:s + 500] = d.argmin(1), d.min(1)
    t_exact = (time.perf_counter() - t0) * n / len(rows)
    return dict(exact_s=t_exact, hnsw_s=t_approx, queries=len(rows),
                recall=float((exact == approx[rows]).mean()),
                tie_recall=float(np.isclose(d_exact, d_approx[rows]).mean()))


def child_main(argv) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what")
    p.add_argument("--method")
    p.add_argument("--n", type=int)
    p.add_argument("--dim", type=int)
    p.add_argument("--faces", type=int, nargs=2)
    p.add_argument("--seed", type=int)
    p.add_argument("--cannot-link", action="store_true")
    p.add_argument("--hnsw", action="store_true")
    p.add_argument("--labels-out")
    a = p.parse_args(argv)
    if a.what == "_recall":
        out = neighbour_recall(a.n, a.dim, a.faces, a.seed)
    else:
        out = run_one(a.method, a.n, a.dim, a.faces, a.seed, a.cannot_link, a.hnsw, a.labels_out)
    print("RESULT " + json.dumps(out), flush=True)


def _child(args: list[str], budget: float, inline: bool = False) -> tuple[dict | None, str]:
    """Run this script's child mode -> (figures, '') or (None, why it has none); ``inline``:
    in this process (no budget kill; peak RSS over this process's life so far is reset)."""
    if inline:
        import io
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                child_main(args)
        except Exception as e:          # noqa: BLE001 - reported as the row's note
            return None, f"failed: {type(e).__name__}: {str(e)[:150]}"
        return json.loads(out.getvalue().split("RESULT ", 1)[1]), ""
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, f"killed: over the {budget:.0f} s budget"
    line = next((s for s in out.splitlines() if s.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        last = (err.strip().splitlines() or ["no output"])[-1]
        return None, f"failed: {last[:150]}"
    return json.loads(line[7:]), ""


# ------------------------------------------------------------------------------- the table
def variants(names) -> list[tuple[str, str, dict]]:
    """(row name, method, child flags) for every registered method and its options."""
    from training.clustering import methods
    out = []
    for name in names:
        m = methods.get(name)
        out.append((name, name, {}))
        if m.cannot_link == "option":
            out.append((name + " +cl", name, {"cannot_link": True}))
        if "search" in m.defaults:
            out.append((name + " ~hnsw", name, {"hnsw": True}))
    return out


def needs_crops(method) -> str:
    """Why a registered method cannot run on synthetic (crop-less) tracks, or ''."""
    if method.crops:
        return "needs face crops (synthetic tracks have none)"
    return ""


def quadratic_gb(row: str, n: int) -> float | None:
    key = "ap" if row == "ap" else ("hac+cl" if row.startswith("hac") and "+cl" in row
                                    else "hac" if row.startswith("hac") else None)
    return None if key is None else QUADRATIC_BYTES[key] * n * n / 1e9


def bench(args) -> None:
    from training.clustering import methods
    names = args.methods or sorted(methods.METHODS)
    try:
        import hnswlib  # noqa: F401
        have_hnsw = True
    except ImportError:
        have_hnsw = False
    print(f"D={args.dim} ({'the face pack' if args.dim == 128 else 'not the face pack'}'s "
          f"MobileFaceNet size is 128), N/20 identities (Zipf), 1-3 tracks per shot, "
          f"{args.faces[0]}-{args.faces[1]} faces per track (c1c), budget {args.budget:.0f} s, "
          f"memory cap {args.mem_gb:g} GB, {os.cpu_count()} CPUs (shared machine: times are noisy)",
          flush=True)
    rows, last_time, labels_dir = [], {}, tempfile.mkdtemp(prefix="bench_cluster_")
    skip_all = {}
    for name in names:
        why = needs_crops(methods.get(name))
        if why:
            skip_all[name] = why
    try:
        for n in args.tracks:
            for row, name, flags in variants(names):
                if name in skip_all:
                    _print(rows, n, row, None, "skipped: " + skip_all[name])
                    continue
                if flags.get("hnsw") and (n < args.ann_from or not have_hnsw):
                    if n >= args.ann_from:
                        _print(rows, n, row, None, "skipped: hnswlib not installed")
                    continue
                gb = quadratic_gb(row, n)
                if gb is not None and gb > args.mem_gb:
                    _print(rows, n, row, None, f"skipped: N^2 = {gb:.0f} GB")
                    continue
                prev = last_time.get(row)
                if prev is not None and prev[1] * (n / prev[0]) ** 2 > args.budget:
                    _print(rows, n, row, None, f"skipped: ~{prev[1] * (n / prev[0]) ** 2:.0f} s "
                           f"(quadratic from N={prev[0]}) > budget")
                    continue
                lab = os.path.join(labels_dir, f"{row.replace(' ', '_')}_{n}.npy")
                argv = ["_run", "--method", name, "--n", str(n), "--dim", str(args.dim),
                        "--faces", *map(str, args.faces), "--seed", str(args.seed),
                        "--labels-out", lab]
                argv += ["--cannot-link"] if flags.get("cannot_link") else []
                argv += ["--hnsw"] if flags.get("hnsw") else []
                res, why = _child(argv, args.budget, args.inline)
                if res is None:
                    if why.startswith("failed") and n == min(args.tracks):
                        skip_all[name] = why
                    last_time[row] = (n, args.budget)
                    _print(rows, n, row, None, why)
                    continue
                last_time[row] = (n, res["seconds"])
                if flags.get("hnsw"):
                    exact = os.path.join(labels_dir, f"{name}_{n}.npy")
                    if os.path.exists(exact):
                        from sklearn.metrics import normalized_mutual_info_score
                        res["agreement"] = float(normalized_mutual_info_score(
                            np.load(exact), np.load(lab)))
                        base = next((r for r in rows if r[0] == n and r[1] == name and r[2]), None)
                        if base:
                            res["speedup"] = base[2]["seconds"] / res["seconds"]
                _print(rows, n, row, res, "")
            if have_hnsw and n >= args.ann_from and ({"finch", "c1c"} & set(names)):
                res, why = _child(["_recall", "--n", str(n), "--dim", str(args.dim), "--faces",
                                   *map(str, args.faces), "--seed", str(args.seed)], args.budget,
                                  args.inline)
                print(f"first neighbours N={n}: " + (why or
                      f"exact {res['exact_s']:.1f} s (from {res['queries']} queries), hnsw "
                      f"{res['hnsw_s']:.1f} s (build + query, x{res['exact_s'] / res['hnsw_s']:.1f}"
                      f"), recall@1 {res['recall']:.4f} (same distance: {res['tie_recall']:.4f})"),
                      flush=True)
    finally:
        for f in os.listdir(labels_dir):
            os.remove(os.path.join(labels_dir, f))
        os.rmdir(labels_dir)
    print("\n| tracks | method | seconds | call peak RSS MiB | NMI | clusters / identities | "
          "cannot-links violated | note |")
    print("|---|---|---|---|---|---|---|---|")
    for n, row, res, note in rows:
        if res is None:
            print(f"| {n:,} | {row} | | | | | | {note} |")
            continue
        extra = []
        if res.get("cut") is not None:
            extra.append(f"cut {res['cut']:.3f}")
        if "agreement" in res:
            extra.append(f"NMI vs exact {res['agreement']:.4f}")
        if "speedup" in res:
            extra.append(f"exact/approx time x{res['speedup']:.2f}")
        print(f"| {n:,} | {row} | {res['seconds']:.2f} | {res['call_peak_mb']:.0f} | "
              f"{res['nmi']:.3f} | {res['clusters']} / {res['identities']} | "
              f"{res['cl_violated']} | {', '.join(extra)} |")


def _print(rows, n, row, res, note) -> None:
    rows.append((n, row, res, note))
    if res is None:
        print(f"N={n:7d} {row:20s} {note}", flush=True)
    else:
        print(f"N={n:7d} {row:20s} {res['seconds']:9.2f} s  call peak {res['call_peak_mb']:7.0f} "
              f"MiB  NMI {res['nmi']:.3f}  clusters {res['clusters']}/{res['identities']}"
              + (f"  vs exact NMI {res['agreement']:.4f}" if "agreement" in res else ""),
              flush=True)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("_run", "_recall"):
        return child_main(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tracks", nargs="+", type=int, default=[1000, 10_000, 100_000])
    p.add_argument("--dim", type=int, default=128, help="embedding size (128: the face pack)")
    p.add_argument("--methods", nargs="+", help="registered method names (default: all)")
    p.add_argument("--budget", type=float, default=300, help="seconds per method and size")
    p.add_argument("--mem-gb", type=float, default=8, help="skip N x N methods above this")
    p.add_argument("--faces", nargs=2, type=int, default=[5, 50], help="faces per track range")
    p.add_argument("--ann-from", type=int, default=100_000,
                   help="also run FINCH/C1C with HNSW first neighbours from this N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inline", action="store_true", help="run every method in this process "
                   "(quick checks: no budget kill, peak RSS less isolated)")
    bench(p.parse_args(argv))


if __name__ == "__main__":
    main()
