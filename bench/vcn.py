"""Benchmark: `vcn` (VideoClusterNet, training/clustering/vcn.py) on a generated 60 s title, vs c1c / finch.

    python bench/vcn.py --models ../shared/models/face-pack [--seconds 60] [--param steps=4 ...]

Generates one labelled title (``harvest.samples`` faces, 1-3 per shot, cuts every 2-10 s, the
shot plan of bench/long_title.py), harvests it (``--crops sample``, ``--det-stride 2``) and runs
``evaluate`` once per method, printing wall seconds and NMI / WCP / PCR. Measures and prints;
asserts nothing (timings on a shared machine are noisy).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.append(HERE)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", required=True)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["vcn", "c1c", "finch"])
    ap.add_argument("--param", nargs="*", default=[], help="vcn parameters KEY=VALUE")
    ap.add_argument("--workdir")
    a = ap.parse_args(argv)
    from harvest.cli import main as harvest_main
    from harvest.samples import make_clip
    from long_title import shot_plan
    from training.evaluation.evaluate import evaluate
    from training.clustering.methods import parse_params

    work = a.workdir or tempfile.mkdtemp(prefix="bench-vcn-")
    video = os.path.join(work, "videos", "title.mp4")
    os.makedirs(os.path.dirname(video), exist_ok=True)
    truth = make_clip(video, shots=shot_plan(a.seconds / 60, a.seed, False), seed=a.seed)
    truth.write_labels_csv(os.path.join(work, "labels.csv"), "title.mp4")
    t0 = time.perf_counter()
    assert harvest_main(["run", "--input", os.path.dirname(video), "--output",
                         os.path.join(work, "harvest"), "--models", a.models, "--det-stride", "2",
                         "--workers", "1", "--no-progress"]) == 0
    print(f"harvest: {time.perf_counter() - t0:.1f}s")
    params = parse_params([f"models={a.models}", *a.param])
    for m in a.methods:
        t0 = time.perf_counter()
        r = evaluate(os.path.join(work, "harvest", "shards"), None,
                     os.path.join(work, "labels.csv"), methods=[m], params=params)[0]
        print(f"{m:6s} {time.perf_counter() - t0:7.1f}s  tracks {r['n_tracks']}  clusters "
              f"{r['n_clusters']}/{r['n_identities']}  NMI {r['nmi']:.3f}  WCP {r['wcp']:.3f}  "
              f"PCR {r['pcr']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
