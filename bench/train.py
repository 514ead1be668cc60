"""Benchmark: epoch time per head on a synthetic shard set (default 169,201 tracks, D=512, the
Multi-Face corpus size) and clustering time for 1K and 10K tracks per method.

    python bench/train.py [--tracks 169201] [--dim 512] [--gpu] [--workdir DIR]

Epochs run in-process with the training loop's ``run_epoch`` (one worker, no Ray Train) so the
figure is the compute of one epoch at the paper's batch sizes. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from training import cluster, registry  # noqa: E402
from training.data import build_samples, make_batches, read_tracks  # noqa: E402
from training.synthetic import SyntheticSpec, write_dataset  # noqa: E402
from training.train import Objective, make_optimizer, run_epoch  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tracks", type=int, default=169_201)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--tracks-per-title", type=int, default=1400)
    p.add_argument("--heads", nargs="+", default=sorted(registry.HEADS))
    p.add_argument("--cluster-sizes", nargs="+", type=int, default=[1000, 10000])
    p.add_argument("--methods", nargs="+", default=list(cluster.METHODS))
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--workdir")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.gpu else "cpu")
    work = args.workdir or tempfile.mkdtemp(prefix="bench_train_")
    n_titles = -(-args.tracks // args.tracks_per_title)
    spec = SyntheticSpec(dim=args.dim, n_identities=30, tracks_per_title=args.tracks_per_title,
                         faces_per_track=(3, 3))
    t0 = time.perf_counter()
    paths = write_dataset(work, n_titles, spec)
    print(f"wrote {n_titles} shards ({n_titles * args.tracks_per_title} tracks, D={args.dim}) "
          f"in {time.perf_counter() - t0:.1f}s -> {paths['shards']}", flush=True)
    t0 = time.perf_counter()
    table = read_tracks(paths["shards"], engine="arrow")
    print(f"read {table.num_rows} tracks in {time.perf_counter() - t0:.1f}s", flush=True)
    print(f"torch threads {torch.get_num_threads()}, device {device}")
    for head in args.heads:
        hs = registry.get(head)
        hp = hs.hparams()
        t0 = time.perf_counter()
        samples = build_samples(table, hs.samples)
        t_build = time.perf_counter() - t0
        obj = Objective(head, args.dim).to(device)
        opt = make_optimizer(obj, hp)
        batches = make_batches(samples, hp["batch_size"], np.random.default_rng(0))
        t0 = time.perf_counter()
        (total, count), _ = run_epoch(obj, samples, batches, device, opt, hp)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_epoch = time.perf_counter() - t0
        print(f"epoch {head:10s}: {t_epoch:8.1f}s  ({len(samples)} samples, {len(batches)} "
              f"batches of ~{hp['batch_size']}, loss {total / count:.4f}; samples built in "
              f"{t_build:.1f}s)", flush=True)
    rng = np.random.default_rng(0)
    for n in args.cluster_sizes:
        centres = rng.standard_normal((max(n // 20, 2), args.dim))
        emb = centres[rng.integers(len(centres), size=n)] + 0.5 * rng.standard_normal((n, args.dim))
        k = len(centres)
        for method in args.methods:
            t0 = time.perf_counter()
            if method == "hac-k":
                cluster.hac_k(emb, k, "average")
            elif method == "hac-threshold":
                cluster.hac_threshold(emb, 0.820420, "complete")
            else:
                cluster.affinity_propagation(emb)
            print(f"cluster {method:13s} N={n:6d}: {time.perf_counter() - t0:8.2f}s", flush=True)


if __name__ == "__main__":
    main()
