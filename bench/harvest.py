"""Benchmark: decode-only vs the full per-title harvest, per stage, at several resolutions.

    python bench/harvest.py [--res 360 720 1080] [--seconds 60] [--stride 1 2]
                            [--backend insightface|torch|dlib] [--device cpu|cuda] [--models DIR]
    python bench/harvest.py --backend dlib               # strides 2 4 8 (around dlib's default 4)
    python bench/harvest.py --video crowd.mp4 ...        # a given file instead of generated titles

For each resolution a title of ``--seconds`` at 25 fps is generated on disk (faces from
``harvest.samples`` drifting on textured backgrounds, cuts every 2-10 s; the same renderer as
bench/long_title.py), then measured in this one process:
  * decode only (the reader the harvest uses, ``harvest.video.readers``: every frame decoded and
    delivered where the backend wants it);
  * the harvest of the title (``harvest_title``: decode -> shots -> detect -> align/embed ->
    tracks -> mining -> spill) at each ``--stride``, stages overlapped in threads;
  * each stage's busy time, the harvest/decode-only throughput ratio, and real-time factor
    (harvested frames/s / 25); the 1-minute load average when each run ended (the machine may be
    shared) and the CPU seconds the run took in this process and its children; peak RSS of this
    process. Without ``--stride`` the strides are half, once and twice
    the backend's recommended stride (``default_det_stride``: 1 and 2 for most, 2 4 8 for dlib).
    dlib computes its descriptors in torch in this process (``harvest.faces.dlib_resnet``).
``--device cuda`` runs the torch backend on the GPU (frames decoded by NVDEC where PyNvVideoCodec
is installed, ``--decoder pyav`` for CPU decode + upload) and also prints each run's mean GPU
utilisation (NVML, sampled every 0.2 s) and peak GPU memory. ``--decoder`` picks the reader
for the decode-only run and the harvest alike. It measures and prints; it asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.append(HERE)          # after the repo: this file's name would shadow the package

from harvest.config import HarvestConfig, RunOptions  # noqa: E402
from harvest.video.readers import choices as decoder_choices, open_reader  # noqa: E402
from gpu_util import GpuSampler  # noqa: E402
from harvest.faces.registry import BACKENDS, load_backend  # noqa: E402
from harvest.title.pipeline import harvest_title  # noqa: E402

SHARED = os.path.join(os.path.dirname(HERE), "..", "shared")
FPS = 25.0


def decode_only(path: str, chunk_frames: int, decoder: str = "auto", device=None) -> tuple[int, float, str]:
    """Every frame through the reader the harvest would use (``harvest.video.readers``), delivered
    where the backend wants it (numpy, or tensors on its device): frames, seconds, reader."""
    t0 = time.perf_counter()
    with open_reader(path, decoder=decoder, device=device, chunk_frames=chunk_frames) as r:
        n = 0
        for c in r.chunks():
            n += len(c.frames)
        if device is not None and device.type == "cuda":
            import torch
            torch.cuda.synchronize(device)
        name = r.name + (f" (fallback: {r.fallback})" if r.fallback else "")
    return n, time.perf_counter() - t0, name


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its live child processes, from /proc;
    this process only where /proc is missing."""
    total = time.process_time()
    try:
        tick = os.sysconf("SC_CLK_TCK")
        kids = set()
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                kids.update(f.read().split())
        for pid in kids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        pass
    return total


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(video: str, backend, config: HarvestConfig, options: RunOptions) -> dict:
    c0 = cpu_seconds()
    r = harvest_title(video, backend, config, options)
    with r.tracks as tracks:
        return dict(frames=r.frames, seconds=r.seconds, busy=dict(r.times.busy),
                    faces=tracks.faces, tracks=len(tracks), cpu=cpu_seconds() - c0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video", default=None, help="measure this file instead of generated titles")
    ap.add_argument("--res", type=int, nargs="*", default=[360])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--stride", type=int, nargs="*", default=None,
                    help="detection strides (default: half, once and twice the backend's own)")
    ap.add_argument("--backend", default="insightface")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--decoder", default="auto", choices=decoder_choices(),
                    help="frame reader (auto: NVDEC where the backend runs on a GPU and can)")
    ap.add_argument("--models", default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--det-batch", type=int, default=None,
                    help="frames per detector call (default: the backend's preferred_batches)")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)
    models = a.models
    backend_name = "torch" if a.device == "cuda" else a.backend
    if models is None and BACKENDS[backend_name].needs_models:
        models = os.path.join(SHARED, "models", "face-pack")
    if a.stride is None:
        d = BACKENDS[backend_name].default_det_stride
        a.stride = sorted({max(1, d // 2), d, 2 * d})
    base = HarvestConfig(backend=backend_name, models=models)
    backend = load_backend(base, use_gpu=a.device == "cuda", threads=a.threads)
    options = RunOptions(det_batch=a.det_batch, decoder=a.decoder)
    print(f"backend {backend.name} ({', '.join(m.name for m in backend.model_files)}), "
          f"device {getattr(backend, 'device', 'cpu')}, threads {a.threads}, cpus {os.cpu_count()}, "
          f"det_batch {a.det_batch or backend.preferred_batches[0]}, load average {os.getloadavg()[0]:.2f}")

    work = a.workdir or tempfile.mkdtemp(prefix="bench-harvest-")
    os.makedirs(work, exist_ok=True)
    videos = []
    if a.video:
        videos.append((os.path.basename(a.video), a.video))
    else:
        from long_title import generate
        for res in a.res:
            path = os.path.join(work, f"title-{res}p-{a.seconds:g}s.mp4")
            if not os.path.exists(path):
                t0 = time.perf_counter()
                generate(path, a.seconds / 60.0, res, single=False)
                print(f"generated {path} in {time.perf_counter() - t0:.1f} s")
            videos.append((f"{res}p", path))

    rows = []
    for name, video in videos:
        measure(video, backend, HarvestConfig(backend=backend_name, models=models,
                                              det_stride=max(a.stride)), options)   # warm-up
        with GpuSampler(a.device == "cuda") as gpu:
            n, dec, reader = decode_only(video, options.chunk_frames, a.decoder, backend.frame_device)
        print(f"  {name}: decoded by {reader}", flush=True)
        rows.append((name, "decode only", n, dec, None, None, {}, os.getloadavg()[0], None, gpu.mean))
        for stride in a.stride:
            cfg = HarvestConfig(backend=backend_name, models=models, det_stride=stride)
            with GpuSampler(a.device == "cuda") as gpu:
                m = measure(video, backend, cfg, options)
            rows.append((name, f"harvest stride {stride}", m["frames"], m["seconds"], m["faces"],
                         dec, m["busy"], os.getloadavg()[0], m["cpu"], gpu.mean))
            print(f"  {name} stride {stride}: {m['frames'] / m['seconds'] / FPS:.2f}x real time "
                  f"(load {rows[-1][-3]:.2f}, cpu {m['cpu']:.0f} s)", flush=True)
    backend.close()
    print(f"\n{'title':10s} {'run':18s} {'frames':>7s} {'s':>8s} {'fr/s':>8s} {'x real':>7s} "
          f"{'/decode':>8s} {'faces':>7s} {'load':>5s} {'cpu s':>7s} {'gpu %':>6s}  stage busy s "
          f"(decode, detect, embed, track_mine)")
    for name, run, n, secs, faces, dec, busy, load, cpu, util in rows:
        fps = n / secs
        ratio = f"{dec / secs:8.3f}" if dec else f"{'':8s}"
        stages = ", ".join(f"{k} {v:.1f}" for k, v in busy.items())
        print(f"{name:10s} {run:18s} {n:7d} {secs:8.2f} {fps:8.1f} {fps / FPS:7.2f} {ratio} "
              f"{faces if faces is not None else '':>7} {load:5.2f} "
              f"{f'{cpu:7.1f}' if cpu is not None else '':>7} "
              f"{f'{util:6.0f}' if util is not None else '':>6}  {stages}")
    print("\ncpu s: CPU time of this process and its child processes during the run; on a "
          "shared machine (load above the core count) x real time is bounded by the CPU share")
    print(f"\npeak RSS of this process: {peak_rss_mb():.0f} MB")
    if a.device == "cuda":
        import torch
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB; gpu %: mean "
              "NVML utilisation sampled every 0.2 s during the run (blank: NVML unavailable)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
