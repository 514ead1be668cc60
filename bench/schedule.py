"""Benchmark: how one machine (or one GPU) should run several titles at once, measured.

    python bench/schedule.py [--titles 4] [--seconds 30] [--res 360] [--stride 2] [--k 2]
                             [--device cpu|cuda] [--backend insightface|torch] [--workdir DIR]

The layouts ``harvest run`` offers, run on the same generated titles in one invocation:

  * ``single``  one worker process, one title at a time, all the CPUs its threads (the default
    ``--workers 1 --cpus-per-worker C``), the baseline;
  * ``actors``  K worker processes, each with its own loaded models (on a GPU its own CUDA
    context), each harvesting one title at a time: ``--workers K --cpus-per-worker C/K``
    (``--gpus-per-worker 1/K`` on a GPU node);
  * ``shared``  one worker process whose models are loaded once, harvesting K titles at once in
    threads (each title its own decode, detect, embed and tracking threads; the detector and
    embedder calls of all K titles go to the one model copy): ``--workers 1
    --titles-per-worker K --cpus-per-worker C`` (``--gpus-per-worker 1``).

The processes are started with ``multiprocessing`` (spawn), not Ray, so this runs where Ray is not
installed (the GPU machine); the process layout is the same as the Ray actors'. Timing starts once
every process has loaded its models. For each layout it prints total frames/s, x real time,
frames/s per CPU second, the sum of the processes' peak RSS, the load average and (cuda) the
mean GPU utilisation (NVML) and peak GPU memory. It measures and prints; it asserts nothing.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.append(HERE)

SHARED = os.path.join(os.path.dirname(HERE), "..", "shared")
FPS = 25.0


def _config(a):
    from harvest.config import HarvestConfig
    return HarvestConfig(backend=a.backend, models=a.models, det_stride=a.stride)


def _harvest_many(backend, config, options, titles: "mp.Queue", threads: int) -> int:
    """Harvest titles from the queue in ``threads`` threads sharing ``backend``: frames done."""
    import queue
    import threading
    from harvest.title.pipeline import harvest_title
    done, lock = [0], threading.Lock()

    def loop():
        while True:
            try:
                path = titles.get_nowait()
            except queue.Empty:
                return
            r = harvest_title(path, backend, config, options)
            r.tracks.close()
            with lock:
                done[0] += r.frames
    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return done[0]


def _worker(a, threads: int, per_worker: int, titles, ready, go, results) -> None:
    """One worker process: load the models, wait for the start, harvest, report."""
    from harvest.config import RunOptions
    from harvest.faces.registry import load_backend
    config = _config(a)
    backend = load_backend(config, use_gpu=a.device == "cuda", threads=threads)
    options = RunOptions(det_batch=a.det_batch, decoder=a.decoder)
    ready.put(os.getpid())
    go.wait()
    c0 = time.process_time()
    frames = _harvest_many(backend, config, options, titles, per_worker)
    gpu_mem = 0.0
    if a.device == "cuda":
        import torch
        torch.cuda.synchronize()
        gpu_mem = torch.cuda.max_memory_allocated() / 2**20
    results.put(dict(frames=frames, cpu=time.process_time() - c0, gpu_mem=gpu_mem,
                     rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def run_layout(a, layout: str, videos: list[str]) -> dict:
    from gpu_util import GpuSampler
    ctx = mp.get_context("spawn")
    titles, ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
    for v in videos:
        titles.put(v)
    cpus = a.cpus
    if layout == "single":
        procs = [ctx.Process(target=_worker, args=(a, cpus, 1, titles, ready, go, results))]
    elif layout == "actors":
        procs = [ctx.Process(target=_worker, args=(a, max(1, cpus // a.k), 1, titles, ready, go, results))
                 for _ in range(a.k)]
    else:
        procs = [ctx.Process(target=_worker, args=(a, cpus, a.k, titles, ready, go, results))]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=900)
    load0 = os.getloadavg()[0]
    with GpuSampler(a.device == "cuda") as gpu:
        t0 = time.perf_counter()
        go.set()
        out = [results.get() for _ in procs]
        secs = time.perf_counter() - t0
    for p in procs:
        p.join()
    frames = sum(o["frames"] for o in out)
    cpu = sum(o["cpu"] for o in out)
    return dict(layout=layout, procs=len(procs), frames=frames, seconds=secs, cpu=cpu,
                rss=sum(o["rss"] for o in out), gpu_mem=sum(o["gpu_mem"] for o in out),
                util=gpu.mean, load=max(load0, os.getloadavg()[0]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--titles", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--res", type=int, default=360)
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--k", type=int, default=2, help="titles at once (actors, or threads of one)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--backend", default=None, help="default: insightface on cpu, torch on cuda")
    ap.add_argument("--decoder", default="auto")
    ap.add_argument("--models", default=None)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--det-batch", type=int, default=None, help="default: the backend's")
    ap.add_argument("--layouts", nargs="*", default=["single", "actors", "shared"],
                    choices=["single", "actors", "shared"])
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)
    a.backend = a.backend or ("torch" if a.device == "cuda" else "insightface")
    a.models = a.models or os.path.join(SHARED, "models", "face-pack")
    work = a.workdir or tempfile.mkdtemp(prefix="bench-schedule-")
    os.makedirs(work, exist_ok=True)
    from long_title import generate
    base = os.path.join(work, f"title-{a.res}p-{a.seconds:g}s.mp4")
    if not os.path.exists(base):
        t0 = time.perf_counter()
        generate(base, a.seconds / 60.0, a.res, single=False)
        print(f"generated {base} in {time.perf_counter() - t0:.1f} s", flush=True)
    videos = []
    for i in range(a.titles):            # distinct files (links), the same content
        v = os.path.join(work, f"t{i}-{os.path.basename(base)}")
        if not os.path.exists(v):
            os.link(base, v)
        videos.append(v)
    print(f"{a.titles} titles of {a.seconds:g} s at {a.res}p, stride {a.stride}, backend {a.backend} "
          f"on {a.device}, k {a.k}, cpus {a.cpus}, det_batch {a.det_batch or 'backend default'}", flush=True)
    rows = []
    for layout in a.layouts:
        r = run_layout(a, layout, videos)
        rows.append(r)
        print(f"  {layout}: {r['frames'] / r['seconds']:.1f} frames/s", flush=True)
    print(f"\n{'layout':8s} {'procs':>5s} {'frames':>7s} {'s':>7s} {'fr/s':>7s} {'x real':>7s} "
          f"{'fr/cpu s':>8s} {'sum peak RSS MB':>15s} {'load':>5s} {'gpu %':>6s} {'GPU MiB':>8s}")
    for r in rows:
        fps = r["frames"] / r["seconds"]
        util = f"{r['util']:6.0f}" if r["util"] is not None else f"{'':6s}"
        print(f"{r['layout']:8s} {r['procs']:5d} {r['frames']:7d} {r['seconds']:7.1f} {fps:7.1f} "
              f"{fps / FPS:7.2f} {r['frames'] / max(r['cpu'], 1e-9):8.1f} {r['rss']:15.0f} "
              f"{r['load']:5.2f} {util} {r['gpu_mem']:8.0f}")
    by = {r["layout"]: r for r in rows}
    if "actors" in by and "shared" in by:
        fps = {k: r["frames"] / r["seconds"] for k, r in by.items()}
        print(f"\nshared / actors: throughput {fps['shared'] / fps['actors']:.2f}, "
              f"summed peak RSS {by['shared']['rss'] / by['actors']['rss']:.2f}"
              + (f"; actors / single throughput {fps['actors'] / fps['single']:.2f}" if "single" in fps else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
