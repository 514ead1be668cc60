"""Benchmark: streaming Ray Train epochs on synthetic shard sets of growing size, with the peak RSS
of the shard writer, the driver and the Train workers (which must not grow with the corpus).
Clustering time per method at 1K/10K/100K tracks: ``bench/cluster.py``.

    python bench/train.py [--tracks 169400 1000000] [--heads bcl imptriplet mvcorr]
                          [--large-heads bcl mvcorr] [--workers 2] [--dim 512] [--workdir DIR]

Each shard set is written by a child process, and each training run (one epoch after the
initial validation pass, ``--workers`` Ray Train workers on a fresh local Ray) is driven by
another child, so every peak RSS is that of one process: the writer's and the driver's from
``wait4``, the workers' (max over ranks) from the run's metrics. Shard sets are deleted at the
end unless ``--keep``. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TRACKS_PER_TITLE = 1400


def _child(args: list[str]) -> tuple[str, float]:
    """Run this script with ``args`` -> (stdout, peak RSS of that process in MiB)."""
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{args[0]} failed (exit {proc.returncode}):\n{out[-3000:]}")
    return out, usage.ru_maxrss / 1024


def write_main(out: str, tracks: int, dim: int) -> None:
    from training.synthetic import SyntheticSpec, write_dataset
    n_titles = -(-tracks // TRACKS_PER_TITLE)
    spec = SyntheticSpec(dim=dim, n_identities=30, tracks_per_title=TRACKS_PER_TITLE,
                         faces_per_track=(3, 3))
    write_dataset(out, n_titles, spec, labels=False)


def run_main(head: str, shards: str, out: str, workers: int, gpu: bool) -> None:
    import ray

    from training.data import shard_info
    from training.train import fit
    ray.init(address="local", num_cpus=max(workers, 2), include_dashboard=False,
             log_to_driver=False)
    titles = sorted(i["title_id"] for i in shard_info(shards))
    result = fit(head, shards, out, workers=workers, gpu=gpu, val_titles=titles[:1], epochs=1)
    print("RESULT " + json.dumps(result.metrics))
    ray.shutdown()


def bench(args) -> None:
    work = args.workdir or tempfile.mkdtemp(prefix="bench_train_", dir="/tmp")
    print(f"D={args.dim}, {TRACKS_PER_TITLE} tracks per title, 3 faces per track, "
          f"{args.workers} Train workers, {os.cpu_count()} CPUs (shared: times are noisy)", flush=True)
    rows = []
    try:
        for tracks in args.tracks:
            heads = args.heads if tracks <= min(args.tracks) else args.large_heads
            root = os.path.join(work, f"set_{tracks}")
            t0 = time.perf_counter()
            _, writer_rss = _child(["write", root, str(tracks), str(args.dim)])
            shards = os.path.join(root, "shards")
            size = sum(e.stat().st_size for e in os.scandir(shards)) / 2 ** 30
            print(f"wrote {tracks} tracks ({len(os.listdir(shards))} shards, {size:.2f} GiB) in "
                  f"{time.perf_counter() - t0:.1f}s, writer peak RSS {writer_rss:.0f} MiB", flush=True)
            for head in heads:
                t0 = time.perf_counter()
                out, driver_rss = _child(["run", head, shards, os.path.join(root, "runs"),
                                          str(args.workers)] + (["--gpu"] if args.gpu else []))
                m = json.loads(next(line for line in out.splitlines()
                                    if line.startswith("RESULT "))[7:])
                rows.append((tracks, head, m["seconds"], m["train_samples"], driver_rss,
                             m["worker_peak_rss_mb"], time.perf_counter() - t0))
                print(f"{tracks:>9} tracks {head:10s}: epoch {m['seconds']:7.1f}s "
                      f"({m['train_samples']} samples, {m['train_samples'] / m['seconds']:.0f}/s), "
                      f"val {m['val_seconds']:.1f}s, peak RSS driver {driver_rss:.0f} MiB, "
                      f"worker {m['worker_peak_rss_mb']:.0f} MiB; run {rows[-1][-1]:.0f}s",
                      flush=True)
            if not args.keep:
                shutil.rmtree(root)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| tracks | head | epoch s | samples/s | driver peak RSS MiB | worker peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for tracks, head, sec, n, drss, wrss, _ in rows:
        print(f"| {tracks:,} | {head} | {sec:.1f} | {n / sec:,.0f} | {drss:.0f} | {wrss:.0f} |")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "write":
        return write_main(argv[1], int(argv[2]), int(argv[3]))
    if argv and argv[0] == "run":
        return run_main(argv[1], argv[2], argv[3], int(argv[4]), "--gpu" in argv)
    from training import registry   # imported here: the children's RSS stays their own
    p = argparse.ArgumentParser()
    p.add_argument("--tracks", nargs="+", type=int, default=[169_400, 1_000_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--heads", nargs="+", default=["bcl", "imptriplet", "mvcorr"],
                   choices=sorted(registry.HEADS), help="heads at the smallest size (the "
                   "track-level heads; ssiam/tsiam mine per-face batches and are far slower)")
    p.add_argument("--large-heads", nargs="+", default=["bcl", "mvcorr"],
                   help="heads at the larger sizes")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--workdir", help="where shard sets go (default: a new dir under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the shard sets")
    args = p.parse_args(argv)
    bench(args)


if __name__ == "__main__":
    main()
