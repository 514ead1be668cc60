"""Long titles: wall time and PEAK RSS of one worker harvesting 5-60 minute videos.

    python bench/long_title.py --models ../shared/models/face-pack                  # everything
    python bench/long_title.py --minutes 5 20 --res 360 --single 10 --models ...    # a part
    python bench/long_title.py --minutes 5 --res 360 --single --pools mimalloc jemalloc --repeat 2 ...

Each title is generated on disk one frame at a time (H.264 through PyAV, never held in memory)
from the labelled face material of ``harvest.samples`` (insightface's bundled photos pasted and
drifting on textured backgrounds, 1-3 faces per shot, hard cuts every 2-10 s), or as one single
shot of one face (``--single MINUTES``). Each title is then harvested by a ``TitleWorker`` in a
fresh child process (real face pack, real shard writing to a local output) with a detection
stride (``--stride``) chosen so that a 60-minute title takes about 30 minutes on 2 cores; faces
and tracks still accumulate as in a real run. The parent samples the child's RSS every 0.2 s;
the child also reports its own ``ru_maxrss``. ``--decode-only`` adds a child that only runs
``ChunkedVideoReader`` over the title (to split decode memory from the rest).

Videos are written under ``--workdir`` (default: a temporary directory) and deleted after each
title unless ``--keep``. Timings on a shared machine are noisy; nothing here asserts a time.
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

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FPS = 25.0
RES = {360: (640, 360), 480: (854, 480), 720: (1280, 720), 1080: (1920, 1080)}


def shot_plan(minutes: float, seed: int, single: bool):
    from harvest.samples import ShotSpec, load_identities
    n_frames = int(round(minutes * 60 * FPS))
    if single:
        return [ShotSpec((0,), n_frames, seed)]
    rng = np.random.default_rng(seed)
    n_ids = len(load_identities())
    shots, total = [], 0
    while total < n_frames:
        n = min(int(rng.integers(50, 251)), n_frames - total)
        k = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
        shots.append(ShotSpec(tuple(int(i) for i in rng.choice(n_ids, k, replace=False)), n,
                              int(rng.integers(1 << 30))))
        total += n
    return shots


def render(shots, width: int, height: int, face: tuple[int, int], seed: int,
           loop: int | None = None):
    """Yield BGR uint8 frames one at a time: each shot's background (``harvest.samples``) with
    film grain baked in once per shot (so a frame costs one copy, not a float pass over the whole
    picture: 1080p renders at ~10x the old speed), and its 1-3 heads in separate lanes, drifting on
    slow sinusoids (any shot length) and breathing, blended into their own small regions only.
    With ``loop`` every motion is periodic in ``loop`` frames, so copies of a ``loop``-frame
    segment play on seamlessly (one unbroken shot, one unbroken track)."""
    import cv2
    from harvest.samples import AMP_S, _background, _mask, load_identities
    heads = load_identities()
    rng = np.random.default_rng(seed)
    fw, fh = face
    masks: dict = {}
    for si, spec in enumerate(shots):
        grain = np.random.default_rng(spec.background_seed).normal(0, 2.0, (height, width, 3))
        bg = np.clip(_background(spec, si, width, height) + grain, 0, 255).astype(np.uint8)
        del grain
        lane_w = width / len(spec.identities)
        room_x = max(0.0, (lane_w - fw * (1 + AMP_S) - 4) / 2)
        room_y = max(0.0, (height - fh * (1 + AMP_S) - 8) / 2)
        paths = [(ident, (lane + 0.5) * lane_w, height / 2, rng.uniform(0.2, 1) * room_x,
                  rng.uniform(0.2, 1) * room_y, rng.uniform(0, 2 * np.pi),
                  rng.uniform(80, 400) if loop is None else loop / int(rng.integers(3, 9)))
                 for lane, ident in enumerate(spec.identities)]
        breath = 37 if loop is None else loop / max(1, round(loop / 37))
        for t in range(spec.n_frames):
            frame = bg.copy()
            for ident, cx, cy, ax, ay, ph, period in paths:
                head = heads[ident][0]
                s = 1 + AMP_S * np.sin(2 * np.pi * t / breath + ph)
                w, h = int(round(fw * s)), int(round(fh * s))
                x = cx + ax * np.sin(2 * np.pi * t / period + ph)
                y = cy + ay * np.sin(2 * np.pi * t / (period if loop else 1.7 * period) + 2 * ph)
                px = int(np.clip(round(x - w / 2), 0, width - w))
                py = int(np.clip(round(y - h / 2), 0, height - h))
                crop = cv2.resize(head, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
                if (w, h) not in masks:
                    masks[(w, h)] = _mask(w, h)
                roi = frame[py:py + h, px:px + w]
                blend = roi.astype(np.float32)
                blend += masks[(w, h)] * (crop - blend)
                roi[:] = np.clip(blend, 0, 255).astype(np.uint8)
            yield frame


SEGMENT_MINUTES = 5       # a multi-shot title is this many minutes of shots, repeated
LOOP_FRAMES = 1000        # a single shot is this many frames of periodic motion, repeated


def encode(path: str, frames, width: int, height: int) -> int:
    """Write BGR frames as H.264 (``harvest.samples._writer``); returns the frame count."""
    from harvest.samples import _writer
    write, close = _writer(path, width, height, FPS)
    n = 0
    try:
        for frame in frames:
            write(frame)
            n += 1
    finally:
        close()
    return n


def repeat_packets(segments: list[tuple[str, int]], dst: str) -> None:
    """Concatenate encoded segments [(path, times)] into ``dst`` by copying their packets with
    shifted timestamps (no re-encode; each segment starts on a keyframe with the same encoder
    settings, as ffmpeg's concat demuxer requires)."""
    import av
    with av.open(segments[0][0]) as first, av.open(dst, "w") as out:
        ost = out.add_stream_from_template(first.streams.video[0])
        offset = None
        for path, times in segments:
            for _ in range(times):
                with av.open(path) as inp:
                    ist = inp.streams.video[0]
                    end = offset or 0
                    for pkt in inp.demux(ist):
                        if pkt.dts is None:
                            continue
                        # timestamps in the output stream's time base, after the previous copy
                        shift = 0 if offset is None else offset
                        pts = int(round(float(pkt.pts * ist.time_base) / float(ost.time_base)))
                        dts = int(round(float(pkt.dts * ist.time_base) / float(ost.time_base)))
                        dur = int(round(float(pkt.duration * ist.time_base) / float(ost.time_base)))
                        pkt.pts, pkt.dts, pkt.duration = pts + shift, dts + shift, dur
                        end = max(end, pkt.pts + dur)
                        pkt.stream = ost
                        out.mux(pkt)
                    offset = end


def segment(folder: str, n: int, res: int, single: bool, seed: int) -> str:
    """The encoded ``n``-frame segment that titles of this kind repeat, rendered once per
    folder (``seg-*.mp4``: the 20- and 60-minute titles reuse the 5-minute one's)."""
    path = os.path.join(folder, f"seg-{res}p-{'single' if single else 'shots'}-{n}-s{seed}.mp4")
    if not os.path.exists(path):
        width, height = RES[res]
        scale = height / 360
        face = (int(100 * scale), int(136 * scale))
        shots = shot_plan(n / FPS / 60, seed, single)
        tmp = path + ".tmp.mp4"
        encode(tmp, render(shots, width, height, face, seed, LOOP_FRAMES if single else None),
               width, height)
        os.replace(tmp, path)
    return path


def generate(path: str, minutes: float, res: int, single: bool, seed: int = 0) -> int:
    """Write the title (H.264 via PyAV) without holding it in memory; returns the frame count.
    Only the first ``SEGMENT_MINUTES`` of shots (or ``LOOP_FRAMES`` of the single shot) are
    rendered and encoded; a longer title repeats that segment's packets (a 60-minute title is
    12 copies of 5 minutes of shots: every copy is new shots, new tracks and new faces to the
    harvest, and 1080p generation drops from hours to minutes). Repeats of the single shot join
    seamlessly: one shot, one track."""
    total = int(round(minutes * 60 * FPS))
    seg = LOOP_FRAMES if single else int(round(min(minutes, SEGMENT_MINUTES) * 60 * FPS))
    times, rest = divmod(total, seg)
    parts = []
    for n, k in ((seg, times), (rest, 1)):
        if n and k:
            parts.append((segment(os.path.dirname(path) or ".", n, res, single, seed), k))
    if len(parts) == 1 and parts[0][1] == 1:
        shutil.copyfile(parts[0][0], path)
    else:
        repeat_packets(parts, path)
    return total


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
sys.path.append({bench!r})     # after the repo: bench/harvest.py would shadow the package
mode, video, out, models, stride, threads, trace = {args!r}
if trace:
    from long_title import start_trace
    start_trace(trace)
t0 = time.perf_counter()
if mode == "decode":
    from harvest.video.decode import ChunkedVideoReader
    with ChunkedVideoReader(video) as r:
        for chunk in r.chunks():
            pass
        res = dict(frames=r.frames_read, faces=0, tracks=0)
else:
    from harvest.config import HarvestConfig, RunOptions
    from harvest.run.sources import list_sources
    from harvest.run.worker import TitleWorker
    worker = TitleWorker(out, HarvestConfig(models=models, det_stride=stride), RunOptions(),
                         threads=threads)
    (src,) = list_sources(video)
    t0 = time.perf_counter()
    rec = worker.process(src)
    if rec["status"] != "done":
        raise SystemExit(rec["error"])
    res = dict(frames=rec["frames"], faces=rec["faces"], tracks=rec["tracks"],
               valid_tracks=rec["valid_tracks"], cannot_link_pairs=rec["cannot_link_pairs"])
res.update(seconds=time.perf_counter() - t0,
           maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print("RESULT " + json.dumps(res))
"""


def start_trace(seconds: float) -> None:
    """In the worker process: every ``seconds`` print one ``TRACE {json}`` line with where its
    memory sits: RSS, glibc's heap (``mallinfo2``: arenas in use / free, mmapped blocks), Arrow's
    pool (allocated, peak), and Python objects counted by type (the growing ones show a leak)."""
    import ctypes
    import gc
    import threading
    from collections import Counter

    import pyarrow as pa

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    t0 = time.time()
    mb = lambda b: round(b / 2**20, 1)  # noqa: E731

    def loop():
        while True:
            m = libc.mallinfo2()
            types = Counter(type(o).__name__ for o in gc.get_objects())
            pool = pa.default_memory_pool()
            print("TRACE " + json.dumps(dict(
                t=round(time.time() - t0), rss=mb(rss(os.getpid())), arena=mb(m.arena),
                in_use=mb(m.uordblks), free=mb(m.fordblks), mmapped=mb(m.hblkhd),
                arrow=mb(pool.bytes_allocated()), arrow_peak=mb(pool.max_memory()),
                objects=sum(types.values()), top=types.most_common(8))), flush=True)
            time.sleep(seconds)

    threading.Thread(target=loop, daemon=True, name="trace").start()


def rss(pid: int) -> int:
    """Resident set size of a live process, bytes (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def run_child(mode: str, video: str, out: str, models: str, stride: int, threads: int,
              trace: float = 0, trace_file: str | None = None, name: str = "",
              pool: str | None = None) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    code = CHILD.format(repo=os.path.dirname(here), bench=here,
                        args=(mode, video, out, models, stride, threads, trace))
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        env = dict(os.environ, **({"ARROW_DEFAULT_MEMORY_POOL": pool} if pool else {}))
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out_f, stderr=err_f, env=env)
        samples = []
        while proc.poll() is None:
            try:
                samples.append(rss(proc.pid))
            except OSError:
                pass
            time.sleep(0.2)
        out_f.seek(0), err_f.seek(0)
        stdout, stderr = out_f.read(), err_f.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed ({proc.returncode}):\n{stderr[-3000:]}")
    res = json.loads(stdout.rsplit("RESULT ", 1)[1])
    if trace_file:
        with open(trace_file, "a") as f:
            for line in stdout.splitlines():
                if line.startswith("TRACE "):
                    f.write(json.dumps({"title": name, "mode": mode,
                                        **json.loads(line[6:])}) + "\n")
    res["wall"] = time.perf_counter() - t0
    res["polled_peak"] = max(samples, default=0)
    # RSS over the run's second half vs its first: growth means memory that scales with length
    half = samples[len(samples) // 4: len(samples) // 2] or samples
    res["rss_mid"], res["rss_end"] = max(half, default=0), max(samples[-5:], default=0)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", required=True, help="face-pack directory (insightface backend)")
    p.add_argument("--minutes", type=float, nargs="*", default=[5, 20, 60])
    p.add_argument("--res", type=int, nargs="*", default=[360, 1080], choices=sorted(RES))
    p.add_argument("--single", type=float, nargs="*", default=[10],
                   help="lengths (minutes) of single-shot, single-face titles")
    p.add_argument("--stride", type=int, default=8, help="detection stride, multi-shot titles")
    p.add_argument("--single-stride", type=int, default=2,
                   help="detection stride of the single shot (2: 7,500 faces in 10 minutes)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads of the worker")
    p.add_argument("--decode-only", action="store_true", help="also measure decoding alone")
    p.add_argument("--trace", type=float, default=0, metavar="SECONDS",
                   help="sample where the worker's memory sits every SECONDS (--trace-file)")
    p.add_argument("--trace-file", default="long_title_trace.jsonl")
    p.add_argument("--pools", nargs="*", default=[None], metavar="POOL",
                   help="run each title's worker once per Arrow memory pool (mimalloc, jemalloc, "
                        "system: ARROW_DEFAULT_MEMORY_POOL), alternating; default: pyarrow's own")
    p.add_argument("--repeat", type=int, default=1, help="runs per title (and pool)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the generated videos")
    a = p.parse_args(argv)
    work = a.workdir or tempfile.mkdtemp(prefix="long-title-")
    os.makedirs(work, exist_ok=True)
    titles = [(m, r, False) for r in a.res for m in a.minutes] + \
             [(m, r, True) for r in a.res for m in a.single]
    print(f"{'title':22s} {'gen s':>6s} {'wall s':>7s} {'frames':>7s} {'faces':>7s} "
          f"{'tracks':>6s} {'fr/s':>6s} {'peak RSS MB':>11s} {'RSS mid/end MB':>15s}")
    for minutes, res, single in titles:
        name = f"{'single' if single else 'shots'}-{minutes:g}min-{res}p"
        video = os.path.join(work, name + ".mp4")
        t0 = time.perf_counter()
        if not os.path.exists(video):
            generate(video, minutes, res, single)
        gen = time.perf_counter() - t0
        stride = a.single_stride if single else a.stride
        runs = [("harvest", f"stride {stride}" + (f", {pool}" if pool else ""), pool)
                for _ in range(a.repeat) for pool in a.pools]
        runs += [("decode", "decode only", None)] if a.decode_only else []
        try:
            for mode, label, pool in runs:
                out = os.path.join(work, "out-" + name)
                shutil.rmtree(out, ignore_errors=True)
                r = run_child(mode, video, out, a.models, stride, a.threads, a.trace,
                              a.trace_file if a.trace else None, name, pool)
                peak = max(r["maxrss"], r["polled_peak"]) / 2**20
                print(f"{name:22s} {gen:6.0f} {r['wall']:7.0f} {r['frames']:7d} {r['faces']:7d} "
                      f"{r['tracks']:6d} {r['frames'] / r['seconds']:6.1f} {peak:11.0f} "
                      f"{r['rss_mid'] / 2**20:7.0f}/{r['rss_end'] / 2**20:<7.0f} {label}",
                      flush=True)
        finally:
            if not a.keep and os.path.exists(video):
                os.remove(video)
    if not a.keep:
        for name in os.listdir(work):
            if name.startswith("seg-"):
                os.remove(os.path.join(work, name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
