"""Long titles: wall time and PEAK RSS of one worker harvesting 5-60 minute videos.

    python bench/long_title.py --models ../shared/models/face-pack                  # everything
    python bench/long_title.py --minutes 5 20 --res 360 --single 10 --models ...    # a part

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


def render(shots, width: int, height: int, face: tuple[int, int], seed: int):
    """Yield BGR frames one at a time: each shot's background (``harvest.samples``) with its
    1-3 heads in separate lanes, drifting on slow sinusoids (any shot length) and breathing."""
    import cv2
    from harvest.samples import AMP_S, _background, _mask, load_identities
    heads = load_identities()
    rng = np.random.default_rng(seed)
    grain = rng.normal(0, 2.0, (4, height, width, 3)).astype(np.float32)
    fw, fh = face
    t_global = 0
    for si, spec in enumerate(shots):
        bg = _background(spec, si, width, height)
        lane_w = width / len(spec.identities)
        room_x = max(0.0, (lane_w - fw * (1 + AMP_S) - 4) / 2)
        room_y = max(0.0, (height - fh * (1 + AMP_S) - 8) / 2)
        paths = [(ident, (lane + 0.5) * lane_w, height / 2, rng.uniform(0.2, 1) * room_x,
                  rng.uniform(0.2, 1) * room_y, rng.uniform(0, 2 * np.pi), rng.uniform(80, 400))
                 for lane, ident in enumerate(spec.identities)]
        for t in range(spec.n_frames):
            frame = bg + grain[t_global % len(grain)]
            for ident, cx, cy, ax, ay, ph, period in paths:
                head = heads[ident][0]
                s = 1 + AMP_S * np.sin(2 * np.pi * t / 37 + ph)
                w, h = int(round(fw * s)), int(round(fh * s))
                x = cx + ax * np.sin(2 * np.pi * t / period + ph)
                y = cy + ay * np.sin(2 * np.pi * t / (1.7 * period) + ph)
                px = int(np.clip(round(x - w / 2), 0, width - w))
                py = int(np.clip(round(y - h / 2), 0, height - h))
                crop = cv2.resize(head, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
                roi = frame[py:py + h, px:px + w]
                roi += _mask(w, h) * (crop - roi)
            t_global += 1
            yield np.clip(frame, 0, 255).astype(np.uint8)


def generate(path: str, minutes: float, res: int, single: bool, seed: int = 0) -> int:
    """Write the title frame by frame (H.264 via PyAV); returns the frame count."""
    from harvest.samples import _writer
    width, height = RES[res]
    scale = height / 360
    face = (int(100 * scale), int(136 * scale))
    write, close = _writer(path, width, height, FPS)
    n = 0
    try:
        for frame in render(shot_plan(minutes, seed, single), width, height, face, seed):
            write(frame)
            n += 1
    finally:
        close()
    return n


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
mode, video, out, models, stride, threads = {args!r}
t0 = time.perf_counter()
if mode == "decode":
    from harvest.decode import ChunkedVideoReader
    with ChunkedVideoReader(video) as r:
        for chunk in r.chunks():
            pass
        res = dict(frames=r.frames_read, faces=0, tracks=0)
else:
    from harvest.config import HarvestConfig, RunOptions
    from harvest.sources import list_sources
    from harvest.worker import TitleWorker
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


def rss(pid: int) -> int:
    """Resident set size of a live process, bytes (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def run_child(mode: str, video: str, out: str, models: str, stride: int, threads: int) -> dict:
    code = CHILD.format(repo=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        args=(mode, video, out, models, stride, threads))
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out_f, stderr=err_f)
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
        runs = [("harvest", f"stride {stride}")]
        runs += [("decode", "decode only")] if a.decode_only else []
        try:
            for mode, label in runs:
                r = run_child(mode, video, os.path.join(work, "out-" + name), a.models, stride,
                              a.threads)
                peak = max(r["maxrss"], r["polled_peak"]) / 2**20
                print(f"{name:22s} {gen:6.0f} {r['wall']:7.0f} {r['frames']:7d} {r['faces']:7d} "
                      f"{r['tracks']:6d} {r['frames'] / r['seconds']:6.1f} {peak:11.0f} "
                      f"{r['rss_mid'] / 2**20:7.0f}/{r['rss_end'] / 2**20:<7.0f} {label}",
                      flush=True)
        finally:
            if not a.keep and os.path.exists(video):
                os.remove(video)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
