"""Benchmark: decode-only vs the full per-title harvest, serial vs pipelined, in one process.

    python bench/harvest.py [VIDEO] [--models DIR | --backend dlib] [--repeat N]

Prints frames/s of decode alone, of each stage (frames / busy seconds of that stage), of the whole
harvest run serially and with decode, detection and embedding overlapped in threads, the ratio
harvest/decode-only, the pipelining speed-up and each stage's utilisation (busy / wall). It
measures and prints; it asserts nothing about time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harvest.config import HarvestConfig, RunOptions  # noqa: E402
from harvest.decode import ChunkedVideoReader  # noqa: E402
from harvest.faces.registry import load_backend  # noqa: E402
from harvest.pipeline import harvest_title  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")


def default_video() -> str:
    crowd = os.path.join(SHARED, "data", "crowd.mp4")
    if os.path.exists(crowd):
        return crowd
    from harvest.samples import make_clip
    path = "/tmp/harvest-bench-sample.mp4"
    make_clip(path, seed=0)
    return path


def decode_only(path: str, chunk_frames: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    with ChunkedVideoReader(path, chunk_frames=chunk_frames) as r:
        n = sum(len(c.frames) for c in r.chunks())
    return n, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("video", nargs="?", default=None)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--models", default=None)
    ap.add_argument("--det-stride", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args(argv)
    video = a.video or default_video()
    models = a.models
    if models is None and a.backend in ("auto", "insightface"):
        pack = os.path.join(SHARED, "models", "face-pack")
        models = pack if os.path.isdir(pack) else None
    config = HarvestConfig(backend=a.backend, models=models, det_stride=a.det_stride)
    backend = load_backend(config, threads=a.threads)
    opts = RunOptions()
    print(f"video {video}\nbackend {backend.name} ({', '.join(m.name for m in backend.model_files)}),"
          f" det_stride {a.det_stride}, cpus {os.cpu_count()}, repeat {a.repeat} (best of)")

    harvest_title(video, backend, config, RunOptions(pipelined=False))          # warm-up
    n, dec = min((decode_only(video, opts.chunk_frames) for _ in range(a.repeat)), key=lambda x: x[1])
    runs = {}
    for piped in (False, True):
        runs[piped] = min((harvest_title(video, backend, config, RunOptions(pipelined=piped))
                           for _ in range(a.repeat)), key=lambda r: r.seconds)
    serial, piped = runs[False], runs[True]
    print(f"\nframes {n}, faces {piped.tracks.faces}, tracks {len(piped.tracks)}")
    print(f"{'measure':34s} {'seconds':>8s} {'frames/s':>9s}")
    print(f"{'decode only':34s} {dec:8.2f} {n / dec:9.1f}")
    for stage, busy in serial.times.busy.items():
        print(f"{'stage ' + stage + ' (busy, serial run)':34s} {busy:8.2f} {n / max(busy, 1e-9):9.1f}")
    print(f"{'harvest serial':34s} {serial.seconds:8.2f} {n / serial.seconds:9.1f}")
    print(f"{'harvest pipelined':34s} {piped.seconds:8.2f} {n / piped.seconds:9.1f}")
    print(f"\nratio harvest(pipelined)/decode-only throughput: {dec / piped.seconds:.3f}")
    print(f"pipelining speed-up (serial / pipelined wall):   {serial.seconds / piped.seconds:.2f}x")
    print("stage utilisation in the pipelined run (busy / wall): " + ", ".join(
        f"{k} {v / piped.seconds:.0%}" for k, v in piped.times.busy.items()))
    print(f"faces/s embedded (pipelined): {faces / piped.seconds:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
