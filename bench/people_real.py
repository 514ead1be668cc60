"""Benchmark: people across titles on real and generated footage, scored against labels.

    python bench/people_real.py [--cache DIR] [--series-titles 4] [--skip-real] [--skip-series]

1. **Real**: the three labelled real clips of ``../shared/data/real/`` (harvested with the face
   pack as ``bench/real_clusters.py`` does, cached) pooled as one corpus and built with
   ``people build`` (Ray, one task per title). Their casts are disjoint, so a person holding
   tracks of two clips is a measured error. Prints per clip the people restricted to it (PCR,
   WCP, B-cubed F, as ``cluster`` would score the title), and pooled: persons spanning clips,
   cross-title purity (share of people whose labelled tracks are one identity), PCR, WCP, NMI,
   B-cubed F.
2. **Series**: ``harvest sample`` titles (identities recur from title to title) harvested with
   the face pack; people built on all but the last title, then the last added (the
   incremental path). Prints cross-title NMI, PCR, purity, and whether every person of the
   first build kept its id and tracks.

Prints measured figures and one JSON line per part; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
FACE_PACK = os.path.join(SHARED, "models", "face-pack")


def peak_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def person_of(store: str, title_id: str, track_ids) -> np.ndarray:
    import pyarrow.parquet as pq
    t = pq.read_table(os.path.join(store, "assignments", f"{title_id}.parquet"))
    m = dict(zip(t["track_id"].to_pylist(), t["person_id"].to_pylist()))
    return np.array([m.get(int(k)) for k in track_ids], dtype=object)


def scores(y, p) -> dict:
    from training.evaluation.metrics import clustering_scores
    s = clustering_scores(np.asarray(y, str), np.asarray(p, str))
    return {k: round(float(s[k]), 3) for k in ("pcr", "wcp", "nmi", "bcubed_f1")}


def purity(y, p) -> float:
    y, p = np.asarray(y, str), np.asarray(p, str)
    people = np.unique(p)
    return float(np.mean([len(set(y[p == q])) == 1 for q in people])) if len(people) else 1.0


def _real_clusters():
    """bench/real_clusters.py as a module (bench/ is not a package: bench/harvest.py would
    shadow the harvest package on sys.path)."""
    import importlib.util
    if "real_clusters" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "real_clusters", os.path.join(ROOT, "bench", "real_clusters.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules["real_clusters"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["real_clusters"]


def real_part(cache: str | None, log=print) -> dict:
    rc = _real_clusters()
    harvest, load_clips = rc.harvest, rc.load_clips
    from training.people.build import build
    paths = harvest(cache=cache, log=log)
    clips = load_clips(paths)
    shards = os.path.dirname(paths[0])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = build(shards, os.path.join(tmp, "people"), log=lambda *_: None)
        seconds = time.perf_counter() - t0
        ys, ps, clip_of = [], [], []
        rows = []
        for c in clips:
            pred = person_of(os.path.join(tmp, "people"), c.tracks.title_id, c.tracks.track_ids)
            lab = c.labelled & np.array([x is not None for x in pred])
            y = [f"{c.name}/{i}" for i in c.identity[lab]]
            p = [str(x) for x in pred[lab]]
            rows.append(dict(clip=c.name, tracks=int(lab.sum()), people=c.people, **scores(y, p)))
            ys += y
            ps += p
            clip_of += [c.name] * len(y)
    clip_of, ps_arr = np.asarray(clip_of), np.asarray(ps)
    spanning = [q for q in np.unique(ps_arr) if len(set(clip_of[ps_arr == q])) > 1]
    pooled = dict(scores(ys, ps), purity=round(purity(ys, ps), 3), spanning_people=len(spanning),
                  spanning_tracks=int(sum((ps_arr == q).sum() for q in spanning)),
                  people=res["people"], tau=res["tau"], build_seconds=round(seconds, 1))
    log("| clip | labelled tracks | people | PCR | WCP | NMI | B3F |")
    log("|---|---|---|---|---|---|---|")
    for r in rows:
        log(f"| {r['clip']} | {r['tracks']} | {r['people']} | {r['pcr']:.2f} | {r['wcp']:.2f} | "
            f"{r['nmi']:.2f} | {r['bcubed_f1']:.2f} |")
    log(f"pooled: {pooled}")
    return dict(part="real", clips=rows, pooled=pooled)


def series_part(n_titles: int, log=print) -> dict:
    from harvest.cli import main as harvest_main
    from harvest.samples import make_sample_set
    from training.cli import _track_identities
    from training.people.build import build
    with tempfile.TemporaryDirectory() as tmp:
        make_sample_set(os.path.join(tmp, "videos"), n_titles=n_titles, seed=40)
        out = os.path.join(tmp, "harvest")
        harvest_main(["run", "--input", os.path.join(tmp, "videos"), "--output", out,
                      "--models", FACE_PACK, "--no-progress"])
        shards, store = os.path.join(out, "shards"), os.path.join(tmp, "people")
        ids = _track_identities(shards, os.path.join(tmp, "videos", "labels.csv"))
        titles = sorted({t for t, _ in ids})
        from training.data import shard_info
        names = {i["title_id"]: i["source_uri"].rsplit("/", 1)[-1] for i in shard_info(shards)}
        first = [t for t in titles if names[t] != f"title_{n_titles - 1}.mp4"]
        build(shards, store, titles=first, log=lambda *_: None)
        before = {t: person_of(store, t, [k for tt, k in ids if tt == t]) for t in first}
        t0 = time.perf_counter()
        res = build(shards, store, log=lambda *_: None)
        seconds = time.perf_counter() - t0
        after = {t: person_of(store, t, [k for tt, k in ids if tt == t]) for t in first}
        stable = all((before[t] == after[t]).all() for t in first)
        keys = sorted(ids)
        pred = {t: dict(zip([k for tt, k in keys if tt == t],
                            person_of(store, t, [k for tt, k in keys if tt == t])))
                for t in titles}
        y = [ids[k] for k in keys if pred[k[0]][k[1]] is not None]
        p = [str(pred[k[0]][k[1]]) for k in keys if pred[k[0]][k[1]] is not None]
    out = dict(part="series", titles=n_titles, tracks=len(y), identities=len(set(y)),
               people=res["people"], purity=round(purity(y, p), 3), ids_stable=stable,
               incremental_seconds=round(seconds, 1), **scores(y, p))
    log(f"series: {out}")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", help="harvest cache of the real clips (bench/real_clusters.py)")
    p.add_argument("--series-titles", type=int, default=4)
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--skip-series", action="store_true")
    a = p.parse_args(argv)
    from harvest.run.raystart import init_ray
    init_ray(False)
    if not a.skip_real:
        print(json.dumps(real_part(a.cache)))
    if not a.skip_series:
        print(json.dumps(series_part(a.series_titles)))
    print(f"driver peak RSS {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
