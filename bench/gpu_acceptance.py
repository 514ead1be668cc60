"""GPU acceptance: one command that says whether a GPU machine harvests correctly and fast enough.

    python bench/gpu_acceptance.py                        # on a machine with an NVIDIA GPU
    python bench/gpu_acceptance.py --device cpu --seconds 2 --res 360 --frames 3   # CI's size

Needs the project installed with its ``gpu`` extra, not Ray: every row calls the title pipeline
(``harvest.title.pipeline.harvest_title``) in this process, or in ``multiprocessing`` workers for the
layouts (``bench/schedule.py``). It prints one table, a pass / FAIL / skipped per row, and exits
1 when a row fails:

  nvdec frame-exact   ``open_gop.mp4`` decoded by NVDEC (``harvest.video.nvdec``) and by the CPU reader
                      (``harvest.video.decode``): the same frames, numbered alike, pixels within
                      ``NVDEC_MAX_ABS_DIFF`` (NVDEC's colour conversion is not swscale's);
  precision           the torch backend on CUDA in fp16 against torch on the CPU in fp32 on
                      ``--frames`` frames of ``crowd.mp4`` (``harvest.faces.agreement``: matched
                      boxes IoU > 0.9, counts within 2 %, matched faces' cosine > 0.99); on CPU,
                      bfloat16 against fp32 (the same reduced-precision code path);
  harvest = cpu       a generated ``--res`` title (``bench/long_title.py``) harvested through
                      backend and decoder ``auto`` (torch + NVDEC on a GPU; torch + the CPU
                      reader on CPU) against the CPU reference (insightface, pyav): the same
                      shots, >= 90 % of the tracks identical (``agreement.match_tracks``);
  throughput          harvest frames/s of that title with every frame detected beside decode-only
                      frames/s (``bench/harvest.py``): goal >= ``GOAL_FPS`` per GPU and
                      >= ``GOAL_RATIO`` of decode-only;
  layout actors/shared  ``bench/schedule.py``'s two multi-title layouts on ``--titles`` copies of
                      the title: every frame of every title harvested (figures printed).

``--device cpu`` runs the rows that make sense without a GPU and marks the others
"skipped (no CUDA)" (tests/test_gpu_acceptance.py runs it so in CI).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.append(HERE)          # after the repo: bench/harvest.py would shadow the package

SHARED = os.path.join(os.path.dirname(HERE), "..", "shared")
NVDEC_MAX_ABS_DIFF = 12        # per channel, uint8: colour conversion and chroma upsampling
NVDEC_MAX_MEAN_DIFF = 1.0
GOAL_FPS = 4000.0              # harvest frames/s per H100-class GPU, every frame detected
GOAL_RATIO = 0.8               # of decode-only frames/s
NO_CUDA = "skipped (no CUDA)"


@dataclass(frozen=True)
class Row:
    name: str
    status: str                # "pass", "FAIL" or "skipped (...)"
    detail: str


def verdict(name: str, failures: list[str], figures: str) -> Row:
    """A row from its figures and the list of broken conditions (empty: pass)."""
    detail = "; ".join(x for x in [figures, *failures] if x)
    return Row(name, "FAIL" if failures else "pass", detail)


def bench_module(name: str):
    """A bench/ script as a module, for one that cannot be imported by its own name
    (bench/harvest.py: the package)."""
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, os.path.join(HERE, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def _cuda(a) -> bool:
    return a.device == "cuda"


# -- rows --------------------------------------------------------------------------------------

def _frames(reader):
    """(index, presentation time s, (H, W, 3) uint8 numpy) of every frame a reader delivers."""
    for chunk in reader.chunks():
        frames = chunk.frames
        if not isinstance(frames, np.ndarray):
            frames = frames.cpu().numpy()
        for i, f in enumerate(frames):
            yield chunk.start + i, (float(chunk.pts[i]) if chunk.pts is not None else None), f


def compare_readers(ref, cand) -> tuple[str, list[str]]:
    """Every frame of two open readers of one title: index, time, pixels -> (figures, failures).
    A decoder error mid-stream raises (``ReaderFailed``)."""
    import itertools
    n = misnumbered = worst = 0
    total = late = 0.0
    for c, g in itertools.zip_longest(_frames(ref), _frames(cand)):
        if c is None or g is None:
            continue                              # counted below (frames_read)
        (i, t, f), (j, u, h) = c, g
        misnumbered += int(i != j or f.shape != h.shape)
        if t is not None and u is not None:
            late = max(late, abs(t - u))
        if f.shape == h.shape:
            d = np.abs(f.astype(np.int16) - h.astype(np.int16))
            worst, total = max(worst, int(d.max())), total + float(d.mean())
        n += 1
    mean, fps = total / max(n, 1), ref.info.fps or 25.0
    failures = []
    if ref.frames_read != cand.frames_read:
        failures.append(f"frame counts differ: {ref.name} {ref.frames_read}, "
                        f"{cand.name} {cand.frames_read}")
    if misnumbered:
        failures.append(f"{misnumbered} frames numbered or sized differently")
    if late > 0.5 / fps:
        failures.append(f"frame times differ by up to {late:.3f} s")
    if worst > NVDEC_MAX_ABS_DIFF or mean > NVDEC_MAX_MEAN_DIFF:
        failures.append(f"pixels differ beyond max {NVDEC_MAX_ABS_DIFF} / mean {NVDEC_MAX_MEAN_DIFF}")
    figures = (f"{n} frames, max abs diff {worst}, mean abs diff {mean:.3f}, max time diff "
               f"{late * 1000:.1f} ms" + (f" ({cand.fallback})" if cand.fallback else ""))
    return figures, failures


def check_nvdec(a) -> Row:
    """Every frame of ``open_gop.mp4`` from NVDEC against the CPU reader."""
    name = "nvdec frame-exact"
    if not _cuda(a):
        return Row(name, NO_CUDA, "")
    import torch
    from harvest.video.readers import open_reader
    with open_reader(a.open_gop, decoder="pyav") as cpu, \
            open_reader(a.open_gop, decoder="nvdec", device=torch.device("cuda")) as gpu:
        if gpu.name != "nvdec":
            return verdict(name, [f"NVDEC not used: {gpu.fallback}"], "")
        figures, failures = compare_readers(cpu, gpu)
    return verdict(name, failures, figures)


def precision_backends(a):
    """(reference, candidate): torch fp32 on the CPU, and torch fp16 on CUDA (bf16 on CPU)."""
    from harvest.faces.torch_backend import TorchFaceBackend
    ref = TorchFaceBackend(a.models, threads=a.threads)
    cand = TorchFaceBackend(a.models, use_gpu=True, threads=a.threads) if _cuda(a) else \
        TorchFaceBackend(a.models, threads=a.threads, precision="bf16")
    return ref, cand


def check_precision(a) -> Row:
    from harvest.video.decode import ChunkedVideoReader
    from harvest.faces.agreement import compare
    with ChunkedVideoReader(a.crowd) as r:
        frames = [f for c in r.chunks() for f in c.frames]
    frames = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, min(a.frames, len(frames)))]
    ref, cand = precision_backends(a)
    name = f"precision {cand.device.type} {cand.precision} vs cpu fp32"
    agreement = compare(ref, cand, frames)
    failures = agreement.failures()
    if agreement.ref_faces == 0:
        failures.append("no faces found: nothing compared")
    return verdict(name, failures, agreement.summary())


def _harvest(path: str, config, options, use_gpu: bool, threads: int) -> dict:
    """One title through ``harvest_title``: its tracks, shots, reader and backend."""
    from harvest.faces.agreement import read_tracks
    from harvest.faces.registry import load_backend
    from harvest.title.pipeline import harvest_title
    backend = load_backend(config, use_gpu=use_gpu, threads=threads)
    try:
        r = harvest_title(path, backend, config, options)
        with r.tracks as tracks:            # the spill holds every track's row (any order)
            out = dict(tracks=read_tracks(tracks.spill.path), shots=list(r.shot_boundaries), frames=r.frames,
                       decoder=r.decoder, fallback=r.decoder_fallback, backend=backend.name)
    finally:
        backend.close()
    return out


def check_harvest(a, title: str) -> Row:
    from harvest.config import HarvestConfig, RunOptions
    from harvest.faces.agreement import MIN_TRACKS_MATCHED, match_tracks
    name = "harvest auto = cpu harvest"
    ref = _harvest(title, HarvestConfig(backend="insightface", models=a.models,
                                        det_stride=a.stride), RunOptions(decoder="pyav"),
                   False, a.threads)
    # auto is torch + NVDEC on a GPU; without one auto is the reference itself, so the torch
    # backend is named (taking tensor frames from the CPU reader)
    cand = _harvest(title, HarvestConfig(backend="auto" if _cuda(a) else "torch", models=a.models,
                                         det_stride=a.stride), RunOptions(decoder="auto"),
                    _cuda(a), a.threads)
    same = match_tracks(ref["tracks"], cand["tracks"])
    n_ref, n_cand = len(ref["tracks"]), len(cand["tracks"])
    failures = []
    if _cuda(a) and (cand["backend"], cand["decoder"]) != ("torch", "nvdec"):
        failures.append(f"auto chose {cand['backend']} + {cand['decoder']} "
                        f"({cand['fallback'] or 'no fallback reason'}), not torch + nvdec")
    if cand["frames"] != ref["frames"]:
        failures.append(f"frames {cand['frames']} vs {ref['frames']}")
    if cand["shots"] != ref["shots"]:
        failures.append(f"shots differ: {cand['shots']} vs {ref['shots']}")
    if n_ref == 0:
        failures.append("the reference harvest found no tracks")
    elif same < MIN_TRACKS_MATCHED * n_ref or abs(n_cand - n_ref) > max(1, 0.02 * n_ref):
        failures.append(f"only {same} of {n_ref} tracks identical ({n_cand} found)")
    figures = (f"{cand['backend']} + {cand['decoder']}: {n_cand} tracks, {same} of {n_ref} "
               f"identical, {len(ref['shots'])} shots, {ref['frames']} frames")
    return verdict(name, failures, figures)


def check_throughput(a, title: str) -> Row:
    name = f"throughput {a.res}p stride 1"
    if not _cuda(a):
        return Row(name, NO_CUDA, "")
    from harvest.config import HarvestConfig, RunOptions
    from harvest.faces.registry import load_backend
    bh = bench_module("harvest")
    config = HarvestConfig(backend="torch", models=a.models, det_stride=1)
    options = RunOptions(decoder="auto")
    backend = load_backend(config, use_gpu=True, threads=a.threads)
    try:
        bh.measure(title, backend, config, options)                                # warm-up
        n, dec_s, reader = bh.decode_only(title, options.chunk_frames, "auto", backend.frame_device)
        m = bh.measure(title, backend, config, options)
    finally:
        backend.close()
    fps, dec_fps = m["frames"] / m["seconds"], n / dec_s
    failures = []
    if fps < GOAL_FPS:
        failures.append(f"below the goal of {GOAL_FPS:.0f} frames/s")
    if fps < GOAL_RATIO * dec_fps:
        failures.append(f"below {GOAL_RATIO} of decode-only")
    return verdict(name, failures, f"harvest {fps:.0f} frames/s, decode only ({reader}) "
                                   f"{dec_fps:.0f} frames/s, ratio {fps / dec_fps:.2f}")


def check_layouts(a, title: str, frames: int) -> list[Row]:
    """``bench/schedule.py``'s actors and shared layouts on ``a.titles`` links of the title."""
    import schedule as sched      # by its own name: spawned workers unpickle schedule._worker
    videos = []
    for i in range(a.titles):
        v = os.path.join(a.workdir, f"layout-{i}-{os.path.basename(title)}")
        if not os.path.exists(v):
            os.link(title, v)
        videos.append(v)
    ns = argparse.Namespace(backend="torch" if _cuda(a) else "insightface", models=a.models,
                            stride=a.stride, device=a.device, det_batch=None, decoder="auto",
                            cpus=a.threads, k=a.k)
    rows = []
    for layout in ("actors", "shared"):
        r = sched.run_layout(ns, layout, videos)
        want = frames * len(videos)
        failures = [] if r["frames"] == want else [f"{r['frames']} of {want} frames harvested"]
        gpu = f", GPU {r['util']:.0f} %" if r["util"] is not None else ""
        rows.append(verdict(f"layout {layout} (k {a.k})", failures,
                            f"{r['procs']} procs, {r['frames'] / r['seconds']:.1f} frames/s{gpu}, "
                            f"summed peak RSS {r['rss']:.0f} MB"))
    return rows


# -- the command -------------------------------------------------------------------------------

def table(rows: list[Row]) -> str:
    width = max(len(r.name) for r in rows)
    state = max(len(r.status) for r in rows)
    lines = [f"{'check':{width}s}  {'result':{state}s}  figures", "-" * (width + state + 12)]
    lines += [f"{r.name:{width}s}  {r.status:{state}s}  {r.detail}" for r in rows]
    return "\n".join(lines)


def attempt(rows: list[Row], name: str, check, *args) -> None:
    """Append the row(s) ``check(*args)`` returns; a check that raises is a FAIL row naming the
    error (one broken row must not hide the others)."""
    try:
        out = check(*args)
        rows.extend(out if isinstance(out, list) else [out])
    except Exception as e:  # noqa: BLE001 - any failure is the row's result
        rows.append(Row(name, "FAIL", f"{type(e).__name__}: {e}".splitlines()[0]))
    print(f"  {rows[-1].name}: {rows[-1].status}", flush=True)


def exit_code(rows: list[Row]) -> int:
    """0 when no row failed (skipped rows do not fail the run), else 1."""
    return 1 if any(r.status == "FAIL" for r in rows) else 0


def run_rows(a) -> list[Row]:
    """Every row, in order."""
    from long_title import generate
    rows: list[Row] = []
    attempt(rows, "nvdec frame-exact", check_nvdec, a)
    attempt(rows, "precision", check_precision, a)
    title = os.path.join(a.workdir, f"title-{a.res}p-{a.seconds:g}s-s{a.seed}.mp4")
    if not os.path.exists(title):
        t0 = time.perf_counter()
        frames = generate(title, a.seconds / 60.0, a.res, single=False, seed=a.seed)
        print(f"generated {title} ({frames} frames) in {time.perf_counter() - t0:.1f} s", flush=True)
    frames = int(round(a.seconds * 25))
    attempt(rows, "harvest auto = cpu harvest", check_harvest, a, title)
    attempt(rows, f"throughput {a.res}p stride 1", check_throughput, a, title)
    if a.titles:
        attempt(rows, "layouts", check_layouts, a, title, frames)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"],
                    help="default: cuda where torch sees one")
    ap.add_argument("--models", default=os.path.join(SHARED, "models", "face-pack"))
    ap.add_argument("--crowd", default=os.path.join(SHARED, "data", "crowd.mp4"))
    ap.add_argument("--open-gop", default=os.path.join(SHARED, "data", "open_gop.mp4"))
    ap.add_argument("--frames", type=int, default=24, help="crowd.mp4 frames compared (precision)")
    ap.add_argument("--res", type=int, default=720)
    ap.add_argument("--seconds", type=float, default=120.0, help="length of the generated title")
    ap.add_argument("--stride", type=int, default=2, help="detection stride of the harvest rows")
    ap.add_argument("--seed", type=int, default=11,
                    help="the title's shot plan (11: the first cut after 3 s, so that even a "
                         "4 s CI title has two shots)")
    ap.add_argument("--titles", type=int, default=4, help="titles per layout run (0: no layouts)")
    ap.add_argument("--k", type=int, default=2, help="titles at once in the layouts")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args(argv)
    if a.device is None:
        import torch
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    a.workdir = a.workdir or tempfile.mkdtemp(prefix="gpu-acceptance-")
    os.makedirs(a.workdir, exist_ok=True)
    print(f"device {a.device}, models {a.models}, {a.res}p title of {a.seconds:g} s, "
          f"threads {a.threads}", flush=True)
    rows = run_rows(a)
    print()
    print(table(rows))
    return exit_code(rows)


if __name__ == "__main__":
    raise SystemExit(main())
