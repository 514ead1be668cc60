"""Benchmark: streaming Ray Train epochs on synthetic shard sets of growing size: three rates per
head (the data path alone, the model alone, the real epoch) and the peak RSS of the shard
writer, the driver and the Train workers (which must not grow with the corpus). Clustering time
per method at 1K/10K/100K tracks: ``bench/cluster.py``.

    python bench/train.py [--tracks 169400 1000000] [--heads bcl imptriplet mvcorr]
                          [--large-heads bcl mvcorr] [--workers 2] [--dim 512] [--workdir DIR]
                          [--rate-runs 3] [--root CHECKOUT]
    python bench/train.py mining [--faces 1125 4000 9000] [--draw 3000] [--dim 512] [--batches 4]
    python bench/train.py raydata [--tracks 20000] [--dim 512]

Per head and size (every rate in samples per second *per worker*):

* data: rank 0's share of epoch 1, streamed exactly as the train loop gets it
  (``training.train.worker_batches``: read, samples, batches, collated, prefetch thread) with
  no model, in a child process pinned to one CPU (a worker's share). The pass is made twice
  and the second timed, as every epoch after a worker's first; the first, which also pays the
  process's first touches of its memory, is printed beside it. The median of ``--rate-runs``
  fresh children (3 by default: one 2-5 s run on this shared 2-core machine lands anywhere
  between about 0.4x and 1x of the best);
* model: forward + backward + SGD step of the head's objective on one collated batch of the
  head's batch size already in memory, on one thread (what a Ray Train worker with one CPU
  gets), in the same child;
* model under DDP: the same step in ``--workers`` processes at once under DDP (gloo, one
  thread each) on that in-memory batch: the model with the epoch's collectives and the
  machine shared as in the epoch, but no data path (so epoch / model under DDP is what the
  data path costs the epoch);
* epoch: one real epoch (after the initial validation pass) with ``--workers`` Ray Train
  workers on a fresh local Ray, driven by another child: training samples / epoch seconds /
  workers.

Every peak RSS is that of one process: the writer's and the driver's from ``wait4``, the
workers' (max over ranks) from the run's metrics. Each measured run ends with one JSON line
{"head", "tracks", "data_samples_per_s", "model_samples_per_s", "epoch_samples_per_s",
"driver_peak_mib", "worker_peak_mib"}. ``--root`` imports ``training`` from another checkout
(a before/after comparison on the same machine and shard sets).

``mining``: SSiam/TSiam pair mining of the same draws two ways in one process, the dense B x B
reference and the blockwise miner (with what the frame kinds prepare per title: neighbour lists,
or in an older checkout its distance matrix; that cost is spread over the title's
ceil(F / 128) batches), and the ratio. ``raydata``: Ray Data (``read_parquet`` +
``iter_torch_batches``; ``groupby(title_id).map_groups`` for the per-title samples BCL needs)
against the own reader on the same shards, in one process.

Shard sets are deleted at the end unless ``--keep``. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACKS_PER_TITLE = 1400


def _root_from_argv(argv: list[str]) -> str:
    if "--root" in argv:
        return os.path.abspath(argv[argv.index("--root") + 1])
    return ROOT


def _child(args: list[str], root: str = ROOT) -> tuple[str, float]:
    """Run this script with ``args`` -> (stdout, peak RSS of that process in MiB)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(     # Ray's workers import from root too
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args, "--root", root],
                            cwd=root, stdout=subprocess.PIPE, text=True, env=env)
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


def _split(shards: str, workers: int):
    """The driver's split as ``run_main`` makes it (first title validates) -> (train infos, val)."""
    from training.data import shard_info
    infos = sorted(shard_info(shards), key=lambda i: i["title_id"])
    return infos[1:], infos[:1]


def rates_main(head: str, shards: str, workers: int) -> None:
    """Data path alone and model alone (one process on one CPU, one torch thread), then the
    model under DDP (``workers`` processes, every CPU) -> one ``RATES`` line."""
    import numpy as np
    import torch

    from training import registry
    from training.data import collate, deal_titles, iter_titles, stream_batches
    from training.train import make_optimizer
    try:
        from training.objective import Objective
    except ImportError:                 # --root: a checkout from before training/objective.py
        from training.train import Objective
    try:
        from training.train import worker_batches
    except ImportError:          # an older checkout (--root): its loop collated in the step
        worker_batches = None
    torch.set_num_threads(1)
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(cpus)})    # one CPU, a worker's share (threads made later too)
    spec = registry.get(head)
    hp, kind = spec.hparams(), spec.samples
    train, val = _split(shards, workers)
    rng = np.random.default_rng(hp["seed"] * 100003)            # epoch 0, as train_loop
    share = deal_titles(train, workers, rng)[0]
    for _ in iter_titles([val[0]["path"]], kind.columns):       # Arrow's first-read set-up,
        pass                                                     # paid in the validation pass

    def batches():
        if worker_batches is not None:
            return ((b.tensors, b.n) for b in worker_batches(kind, share, hp, rng))
        return ((collate(s, i), len(i)) for s, i in stream_batches(
            iter_titles((i["path"] for i in share), kind.columns), kind, hp["batch_size"], rng,
            None, hp))

    state, seconds = rng.bit_generator.state, []
    for _ in range(2):          # epoch 1's pass, then the same pass again (every later epoch)
        rng.bit_generator.state = state
        t0, n, largest = time.perf_counter(), 0, None
        for tensors, k in batches():
            n += k
            if largest is None or k > largest[1]:
                largest = (tensors, k)
        seconds.append(time.perf_counter() - t0)
    data_first_s, data_s = seconds

    batch, size = largest                   # a batch of the head's size (the largest seen)
    obj = Objective(head, next(iter(batch.values())).shape[-1], hp.get("model_kwargs"))
    opt = make_optimizer(obj, hp)
    obj.train()
    step = _stepper(obj, opt, batch)
    for _ in range(2):
        step()
    t0, steps = time.perf_counter(), 0
    while steps < 5 or time.perf_counter() - t0 < 3.0:
        step()
        steps += 1
    model_s = (time.perf_counter() - t0) / steps
    os.sched_setaffinity(0, cpus)           # the DDP processes share the machine as in the epoch
    ddp_s = _ddp_step_seconds(head, batch, workers, max(5, int(3.0 / model_s) + 1))
    print("RATES " + json.dumps(dict(data_samples=n, data_seconds=data_s,
                                     data_first_seconds=data_first_s, model_batch=size,
                                     model_step_seconds=model_s, ddp_step_seconds=ddp_s)),
          flush=True)


def _stepper(model, opt, batch: dict):
    """One training step of ``model`` (the objective, or its DDP wrapper) on ``batch``."""
    def step():
        opt.zero_grad(set_to_none=True)
        model(batch).backward()
        opt.step()
    return step


def _ddp_step_seconds(head: str, batch: dict, workers: int, steps: int) -> float:
    """Seconds per step of ``workers`` processes training the head under DDP (gloo, one
    thread each, as Ray Train's CPU workers) on the same in-memory batch: the model's rate
    with the epoch's collectives and the machine shared as in the epoch, but no data path."""
    import socket

    import torch
    import torch.multiprocessing as mp
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(batch, os.path.join(tmp, "batch.pt"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_ddp_rank, args=(workers, head, tmp, port, steps), nprocs=workers)
        with open(os.path.join(tmp, "seconds")) as f:
            return float(f.read())


def _ddp_rank(rank: int, world: int, head: str, tmp: str, port: int, steps: int) -> None:
    import torch
    import torch.distributed as dist

    from training import registry
    from training.objective import Objective
    from training.train import make_optimizer
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        hp = registry.get(head).hparams()
        batch = torch.load(os.path.join(tmp, "batch.pt"))
        torch.manual_seed(hp["seed"])
        obj = Objective(head, next(iter(batch.values())).shape[-1], hp.get("model_kwargs"))
        opt = make_optimizer(obj, hp)
        model = torch.nn.parallel.DistributedDataParallel(obj)
        model.train()
        step = _stepper(model, opt, batch)
        for _ in range(2):
            step()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        dist.barrier()
        if rank == 0:
            with open(os.path.join(tmp, "seconds"), "w") as f:
                f.write(str((time.perf_counter() - t0) / steps))
    finally:
        dist.destroy_process_group()


def run_main(head: str, shards: str, out: str, workers: int, gpu: bool) -> None:
    import ray

    from training.train import fit
    ray.init(address="local", num_cpus=max(workers, 2), include_dashboard=False,
             log_to_driver=False)
    _, val = _split(shards, workers)
    result = fit(head, shards, out, workers=workers, gpu=gpu,
                 val_titles=[i["title_id"] for i in val], epochs=1)
    print("RESULT " + json.dumps(result.metrics))
    ray.shutdown()


def _line(out: str, tag: str) -> dict:
    return json.loads(next(line for line in out.splitlines() if line.startswith(tag + " "))
                      [len(tag) + 1:])


def bench(args) -> None:
    work = args.workdir or tempfile.mkdtemp(prefix="bench_train_", dir="/tmp")
    root = os.path.abspath(args.root) if args.root else ROOT
    load = os.getloadavg()
    print(f"D={args.dim}, {TRACKS_PER_TITLE} tracks per title, 3 faces per track, "
          f"{args.workers} Train workers, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (shared: times are noisy), "
          f"training from {root}", flush=True)
    rows = []
    try:
        for tracks in args.tracks:
            heads = args.heads if tracks <= min(args.tracks) else args.large_heads
            set_root = os.path.join(work, f"set_{tracks}")
            shards = os.path.join(set_root, "shards")
            if not os.path.isdir(shards):
                t0 = time.perf_counter()
                _, writer_rss = _child(["write", set_root, str(tracks), str(args.dim)])
                size = sum(e.stat().st_size for e in os.scandir(shards)) / 2 ** 30
                print(f"wrote {tracks} tracks ({len(os.listdir(shards))} shards, {size:.2f} GiB) "
                      f"in {time.perf_counter() - t0:.1f}s, writer peak RSS {writer_rss:.0f} MiB",
                      flush=True)
            for head in heads:
                runs = []
                for _ in range(max(args.rate_runs, 1)):     # one 2-5 s run is noisy here
                    out, rates_rss = _child(["rates", head, shards, str(args.workers)], root)
                    runs.append(_line(out, "RATES"))
                r = dict(runs[0], **{k: statistics.median(x[k] for x in runs) for k in (
                    "data_seconds", "data_first_seconds", "model_step_seconds",
                    "ddp_step_seconds")})
                spread = sorted(round(x["data_samples"] / x["data_seconds"]) for x in runs)
                t0 = time.perf_counter()
                out, driver_rss = _child(["run", head, shards, os.path.join(set_root, "runs"),
                                          str(args.workers)] + (["--gpu"] if args.gpu else []),
                                         root)
                shutil.rmtree(os.path.join(set_root, "runs"), ignore_errors=True)
                m = _line(out, "RESULT")
                row = dict(head=head, tracks=tracks,
                           data_samples_per_s=round(r["data_samples"] / r["data_seconds"]),
                           model_samples_per_s=round(r["model_batch"] / r["model_step_seconds"]),
                           epoch_samples_per_s=round(m["train_samples"] / m["seconds"]
                                                     / args.workers),
                           driver_peak_mib=round(driver_rss), worker_peak_mib=round(
                               m["worker_peak_rss_mb"]),
                           model_ddp_samples_per_s=round(r["model_batch"]
                                                         / r["ddp_step_seconds"]),
                           data_first_pass_samples_per_s=round(r["data_samples"]
                                                               / r["data_first_seconds"]))
                rows.append(row)
                print(f"{tracks:>9} tracks {head:10s}: data {row['data_samples_per_s']:,}/s "
                      f"({r['data_samples']} samples, median of {spread}; the process's first "
                      f"pass {row['data_first_pass_samples_per_s']:,}/s; peak RSS "
                      f"{rates_rss:.0f} MiB), model "
                      f"{row['model_samples_per_s']:,}/s (batch {r['model_batch']}), epoch "
                      f"{m['seconds']:.1f}s = {row['epoch_samples_per_s']:,}/s per worker "
                      f"({m['train_samples']} samples; epoch/model "
                      f"{row['epoch_samples_per_s'] / row['model_samples_per_s']:.2f}; model "
                      f"under DDP {row['model_ddp_samples_per_s']:,}/s, epoch / that "
                      f"{row['epoch_samples_per_s'] / row['model_ddp_samples_per_s']:.2f}), val "
                      f"{m['val_seconds']:.1f}s, peak RSS driver {driver_rss:.0f} MiB, worker "
                      f"{m['worker_peak_rss_mb']:.0f} MiB; run {time.perf_counter() - t0:.0f}s",
                      flush=True)
                print(json.dumps(row), flush=True)
            if not args.keep:
                shutil.rmtree(set_root)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| tracks | head | data /s | model /s | epoch /s | epoch / model | model under DDP /s "
          "| epoch / model under DDP | driver peak MiB | worker peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tracks']:,} | {r['head']} | {r['data_samples_per_s']:,} | "
              f"{r['model_samples_per_s']:,} | {r['epoch_samples_per_s']:,} | "
              f"{r['epoch_samples_per_s'] / r['model_samples_per_s']:.2f} | "
              f"{r['model_ddp_samples_per_s']:,} | "
              f"{r['epoch_samples_per_s'] / r['model_ddp_samples_per_s']:.2f} | "
              f"{r['driver_peak_mib']} | {r['worker_peak_mib']} |")
    for r in rows:      # the output ends with one JSON line per measured run
        print(json.dumps(r))


# ------------------------------------------------------------------------------ mining
def mining(args) -> None:
    """Dense reference vs blockwise miner on the same draws, one process, one thread (torch's
    and numpy's BLAS: on a shared machine a second BLAS thread makes small products ~10x
    slower, and a Ray worker with one CPU gets one)."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from training.losses.siamese_miners import (FaceDistances, ssiam_pairs, ssiam_pairs_dense,
                                                tsiam_negative_tracks, tsiam_pairs,
                                                tsiam_pairs_dense)
    torch.set_num_threads(1)
    threadpool_limits(1)
    print(f"B={args.draw} draw, D={args.dim}, 128 pairs, best of {args.batches} draws per title "
          f"size, 1 thread, load average {os.getloadavg()[0]:.1f}", flush=True)
    print("| faces per title | miner | dense ms/batch | blockwise ms/batch | speed-up "
          "| same pairs |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for n_faces in args.faces:
        faces = torch.from_numpy(rng.normal(size=(n_faces, args.dim)).astype(np.float32))
        n_tracks = max(n_faces // 40, 2)
        track_of = np.sort(rng.integers(0, n_tracks, n_faces))
        links = [[] for _ in range(n_tracks)]
        for a in range(0, n_tracks - 1, 3):          # a third of the tracks co-occur in pairs
            links[a].append(a + 1)
            links[a + 1].append(a)
        rel = tsiam_negative_tracks(rng.normal(size=(n_tracks, args.dim)), links, 25)
        draws = [rng.integers(0, n_faces, args.draw) for _ in range(args.batches)]
        per_title = -(-n_faces // 128)               # batches per title and epoch
        for name in ("ssiam", "tsiam"):
            dense_s, fast_s, same = [], [], 0
            t0 = time.perf_counter()
            dist = _title_distances(FaceDistances, faces, args.draw,
                                    *((track_of, rel) if name == "tsiam" else ()))
            prep = time.perf_counter() - t0
            for idx in draws:
                x, tr, fr = faces[idx], torch.from_numpy(track_of[idx]), torch.from_numpy(idx)
                t0 = time.perf_counter()
                a = (ssiam_pairs_dense(x, 128) if name == "ssiam"
                     else tsiam_pairs_dense(x, tr, rel, fr, 128))
                t1 = time.perf_counter()
                b = (ssiam_pairs(x, 128, fr, dist) if name == "ssiam"
                     else tsiam_pairs(x, tr, rel, fr, 128, dist))
                t2 = time.perf_counter()
                dense_s.append(t1 - t0)
                fast_s.append(t2 - t1)
                same += all(torch.equal(u, v) for u, v in zip(a, b))
            dense = min(dense_s)             # the best of the draws: the machine is shared
            fast = min(fast_s) + prep / per_title
            print(f"| {n_faces:,} | {name} | {dense * 1e3:.0f} | {fast * 1e3:.0f} "
                  f"({_prepared(dist)}; prepare {prep * 1e3:.0f} ms / {per_title} batches) | "
                  f"{dense / fast:.1f}x | {same}/{len(draws)} |", flush=True)


def _title_distances(FaceDistances, faces, draw: int, track=None, negatives=None):
    """A title's distances as the frame kinds prepare them (an older checkout, ``--root``,
    without neighbour lists: its title matrix or per-draw blocks)."""
    try:
        return FaceDistances(faces, draw=draw, track=track, negatives=negatives)
    except TypeError:
        return FaceDistances(faces)


def _prepared(dist) -> str:
    if getattr(dist, "near", None) is not None or getattr(dist, "related", None) is not None:
        return "lists"
    return "matrix cached" if dist.full is not None else "not cached"


# ------------------------------------------------------------------------------ Ray Data
def raydata(args) -> None:
    """Own reader vs Ray Data on the same shards, one process (samples/s, no model)."""
    import numpy as np
    import pyarrow as pa
    import ray

    from training import registry
    from training.columns import IS_VALID, TITLE_ID, TRACKLETS
    from ray.data.expressions import col

    from training.data import build_samples, float_vectors, iter_titles, list_shards, sample_kind
    from training.train import worker_batches
    work = args.workdir or tempfile.mkdtemp(prefix="bench_raydata_", dir="/tmp")
    tracks = args.tracks[0]
    set_root = os.path.join(work, f"set_{tracks}")
    shards = os.path.join(set_root, "shards")
    try:
        if not os.path.isdir(shards):
            _child(["write", set_root, str(tracks), str(args.dim)])
        paths = list_shards(shards)
        infos = [dict(path=p) for p in paths]
        print(f"{tracks} tracks, {len(paths)} shards, load average {os.getloadavg()[0]:.1f}",
              flush=True)
        rows = []
        for _ in iter_titles(paths[:1]):                 # Arrow's first-read set-up
            pass
        for head in ("mvcorr", "bcl"):
            spec = registry.get(head)
            hp = spec.hparams()
            t0, n = time.perf_counter(), 0
            for b in worker_batches(spec.samples, infos, hp, np.random.default_rng(0)):
                n += b.n
            rows.append((head, "own reader (worker_batches: collated batches)", n,
                         time.perf_counter() - t0))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        dim = args.dim

        class Views(ray.data.collate_fn.ArrowBatchCollateFn):
            def __call__(self, batch: pa.Table):
                import torch
                return {"views": torch.from_numpy(float_vectors(batch[TRACKLETS], dim).copy())}

        def mvcorr_pass() -> int:
            """MvCorr: valid tracks' tracklets, shuffled locally, as (B, 3, D) tensors."""
            n = 0
            ds = ray.data.read_parquet(paths).select_columns([TITLE_ID, IS_VALID, TRACKLETS])
            ds = ds.filter(expr=col(IS_VALID) == True)           # noqa: E712 - an expression
            for b in ds.iter_torch_batches(
                    batch_size=registry.get("mvcorr").hparams()["batch_size"], collate_fn=Views(),
                    local_shuffle_buffer_size=4096, device="cpu"):
                n += len(b["views"])
            return n

        kind = sample_kind("clusters")

        def title_samples(table: pa.Table) -> pa.Table:
            s = build_samples(table, kind, required=False)
            return pa.table({"n": pa.array([len(s) if s is not None else 0], pa.int64())})

        def bcl_pass() -> int:
            """BCL: samples need a whole title (cannot-link partners): group by title first.
            Counts the samples per title only (no batches): an upper bound for this path."""
            ds = ray.data.read_parquet(paths).select_columns(list(kind.columns))
            return sum(int(b["n"].sum()) for b in ds.groupby(TITLE_ID).map_groups(
                title_samples, batch_format="pyarrow").iter_batches(batch_format="numpy"))

        for head, name, fn in (("mvcorr", "Ray Data read_parquet + iter_torch_batches",
                                mvcorr_pass),
                               ("bcl", "Ray Data read_parquet + groupby(title).map_groups "
                                "(per-title sample counts only)", bcl_pass)):
            for attempt in ("first pass", "second pass"):
                t0 = time.perf_counter()
                n = fn()
                rows.append((head, f"{name}, {attempt}", n, time.perf_counter() - t0))
        ray.shutdown()
        print("| head | path | samples | s | samples/s |")
        print("|---|---|---|---|---|")
        for head, path, n, sec in rows:
            print(f"| {head} | {path} | {n:,} | {sec:.1f} | {n / sec:,.0f} |", flush=True)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("write", "rates", "run"):
        sys.path.insert(0, _root_from_argv(argv))
        if argv[0] == "write":
            return write_main(argv[1], int(argv[2]), int(argv[3]))
        if argv[0] == "rates":
            return rates_main(argv[1], argv[2], int(argv[3]))
        return run_main(argv[1], argv[2], argv[3], int(argv[4]), "--gpu" in argv)
    sys.path.insert(0, _root_from_argv(argv))
    from training import registry   # imported here: the children's RSS stays their own
    p = argparse.ArgumentParser()
    p.add_argument("mode", nargs="?", choices=("mining", "raydata"),
                   help="mining: SSiam/TSiam miners against the dense reference; raydata: Ray "
                        "Data against the own reader; none: the three rates per head and size")
    p.add_argument("--tracks", nargs="+", type=int, default=None,
                   help="sizes (default: 169400 1000000; raydata: 20000)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--heads", nargs="+", default=["bcl", "imptriplet", "mvcorr"],
                   choices=sorted(registry.HEADS), help="heads at the smallest size (the "
                   "track-level heads; ssiam/tsiam mine per-face batches and are far slower)")
    p.add_argument("--large-heads", nargs="+", default=["bcl", "mvcorr"],
                   help="heads at the larger sizes")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rate-runs", type=int, default=3,
                   help="fresh processes measuring the data and model rates (their median)")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--workdir", help="where shard sets go (default: a new dir under /tmp); an "
                   "existing set_<tracks>/shards there is reused")
    p.add_argument("--keep", action="store_true", help="keep the shard sets")
    p.add_argument("--root", help="import training from this checkout (before/after runs)")
    p.add_argument("--faces", nargs="+", type=int, default=[1125, 4000, 9000],
                   help="mining: faces per title (1,125: the 226-track harvest's titles)")
    p.add_argument("--draw", type=int, default=3000, help="mining: faces drawn per batch")
    p.add_argument("--batches", type=int, default=6, help="mining: draws per title size")
    args = p.parse_args(argv)
    if args.tracks is None:
        args.tracks = [20_000] if args.mode == "raydata" else [169_400, 1_000_000]
    if args.mode == "mining":
        return mining(args)
    if args.mode == "raydata":
        return raydata(args)
    bench(args)


if __name__ == "__main__":
    main()
