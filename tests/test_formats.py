"""The containers and codecs films come in, generated at test time with PyAV.

Every frame of a generated video has its own flat colours (adjacent frames differ by >= 11 grey
levels per channel) and a white block in its top-left corner, so a decoded frame tells which
source frame it is and which way up it is. Each reader frame is checked three ways: against the
source frame it should show (numbering, orientation, geometry), against a sequential PyAV decode
of the same file (numbering: frame k is the decoder's k-th output frame) and by its timestamp
(``FrameChunk.pts`` vs PyAV's ``frame.time``).
"""
from __future__ import annotations

import json
import os
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from conftest import FACE_PACK, need
from harvest.video.decode import MAX_CHUNK_BYTES, ChunkedVideoReader, DecodeError

W, H = 160, 96               # display size of the generated videos
MATCH = 12.0                 # mean abs diff of a lossy decode vs its own source frame (measured <= 3)


def source_frame(i: int, w: int = W, h: int = H) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = (i * 37) % 200 + 28
    img[..., 1] = np.linspace(30, 220, w).astype(np.uint8)[None, :]
    img[..., 2] = (i * 11) % 200 + 28
    img[: h // 4, : w // 4] = 255
    return img


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001
        return False
    return True


def write_video(path, codec="libx264", n=24, size=(W, H), fps=25, pix_fmt="yuv420p", options=None,
                pts_ms=None, rotation=0, sar=None, frame=source_frame):
    """Encode frames ``frame(i, *size)`` as they should be displayed: stored rotated by
    ``-rotation`` (display matrix ``rotation`` degrees counter-clockwise) and squeezed
    horizontally by ``sar``. ``pts_ms``: explicit presentation times (ms) for variable frame rate."""
    import cv2
    w, h = size
    sw = round(w / sar) if sar else w
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps, options=options or {})
        s.pix_fmt = pix_fmt
        s.width, s.height = (h, sw) if rotation % 180 else (sw, h)
        if pts_ms is not None:
            s.codec_context.time_base = s.time_base = Fraction(1, 1000)
        if sar:
            s.codec_context.sample_aspect_ratio = sar
        if rotation:
            s.set_display_rotation(rotation)
        for i in range(n):
            img = frame(i, w, h)
            if sar:
                img = cv2.resize(img, (sw, h), interpolation=cv2.INTER_AREA)
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(img, -(rotation // 90))), format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = pts_ms[i], Fraction(1, 1000)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def remux_packets(src, out, drop=0, corrupt=0):
    """Copy the video packets of ``src``, dropping the first ``drop`` and filling the payload of
    the first ``corrupt`` with random bytes (a stream whose first frames are undecodable)."""
    rng = np.random.default_rng(0)
    with av.open(str(src)) as s, av.open(str(out), "w") as d:
        st = s.streams.video[0]
        o = d.add_stream_from_template(st)
        k = 0
        for p in s.demux(st):
            if p.dts is None:
                continue
            k += 1
            if k <= drop:
                continue
            if k <= corrupt:
                q = av.Packet(bytes(p)[:4] + rng.integers(0, 256, p.size - 4, np.uint8).tobytes())
                q.pts, q.dts, q.time_base, q.is_keyframe = p.pts, p.dts, p.time_base, p.is_keyframe
                p = q
            p.stream = o
            d.mux(p)
    return str(out)


def read_all(path, **kw):
    with ChunkedVideoReader(path, **kw) as r:
        chunks = list(r.chunks())
    for a, b in zip(chunks, chunks[1:]):
        assert b.start == a.stop
    frames = np.concatenate([c.frames for c in chunks])
    pts = np.concatenate([c.pts for c in chunks])
    assert frames.dtype == np.uint8 and frames.shape[1:] == (r.info.height, r.info.width, 3)
    assert r.frames_read == len(frames) == len(pts)
    return r, frames, pts


def pyav_decode(path):
    """Sequential reference decode: stored-geometry RGB frames and frame.time, rejected packets skipped."""
    frames, times = [], []
    with av.open(str(path)) as c:
        for p in c.demux(video=0):
            try:
                decoded = p.decode()
            except av.error.InvalidDataError:
                continue
            for f in decoded:
                frames.append(f.to_ndarray(format="rgb24"))
                times.append(f.time)
    return frames, np.array(times, np.float64)


def diff(a, b) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def which(frame, sources) -> int:
    return int(np.argmin([diff(frame, s) for s in sources]))


def check(path, n_source, rotation=0, sar=None):
    """Reader vs sources and vs PyAV: same frames in the same order, same times, display geometry."""
    import cv2
    r, frames, pts = read_all(path)
    shown = [source_frame(i) for i in range(n_source)]
    sw = round(W / sar) if sar else W
    stored = [np.rot90(cv2.resize(s, (sw, H), interpolation=cv2.INTER_AREA) if sar else s, -(rotation // 90))
              for s in shown]
    ref, ref_times = pyav_decode(path)
    assert len(frames) == len(ref) >= 1
    got = [which(f, shown) for f in frames]
    assert got == [which(f, stored) for f in ref], "frame numbering differs from a sequential PyAV decode"
    worst = max(diff(f, shown[i]) for f, i in zip(frames, got))
    assert worst < MATCH, f"decoded frames look unlike their sources (mean abs diff {worst:.1f})"
    np.testing.assert_allclose(pts, ref_times, rtol=0, atol=1e-9)
    if not rotation and not sar:  # same decoder, same conversion: bit-identical to PyAV
        assert max(diff(f, g) for f, g in zip(frames, ref)) < 0.5
    return r, got, pts


# ------------------------------------------------------------------- codecs and containers

CODECS = [
    ("h264.mp4", "libx264", "yuv420p", {}),
    ("h264_bframes.mkv", "libx264", "yuv420p", {"g": "12", "bf": "3"}),
    ("hevc.mp4", "libx265", "yuv420p", {"x265-params": "log-level=none"}),
    ("hevc10.mkv", "libx265", "yuv420p10le", {"x265-params": "log-level=none"}),
    ("vp9.webm", "libvpx-vp9", "yuv420p", {}),
    ("vp9.mp4", "libvpx-vp9", "yuv420p", {}),
    ("av1.mkv", "libsvtav1", "yuv420p", {"svtav1-params": "log-level=0"}),
    ("av1_aom.mp4", "libaom-av1", "yuv420p", {}),
    ("mpeg4.avi", "mpeg4", "yuv420p", {"qscale": "2"}),
    ("mpeg2.ts", "mpeg2video", "yuv420p", {"qscale": "2"}),
]


@pytest.mark.parametrize("name,codec,pix_fmt,options", CODECS, ids=[c[0] for c in CODECS])
def test_codec_and_container(tmp_path, name, codec, pix_fmt, options):
    if not has_encoder(codec):
        pytest.skip(f"this PyAV's FFmpeg has no {codec} encoder")
    path = write_video(tmp_path / name, codec, n=30, pix_fmt=pix_fmt, options=options)
    r, got, pts = check(path, 30)
    assert got == list(range(30))
    assert np.allclose(np.diff(pts), 0.04, atol=1e-3)
    assert (r.info.width, r.info.height, r.info.rotation, r.info.sample_aspect_ratio) == (W, H, 0, "1:1")
    assert r.info.fps == pytest.approx(25.0, rel=1e-3)
    assert r.info.pix_fmt == pix_fmt and r.info.codec in {"h264", "hevc", "vp9", "libvpx-vp9", "av1",
                                                           "libdav1d", "mpeg4", "mpeg2video"}
    assert abs(r.info.reported_frames - 30) <= 1  # Matroska/TS: estimated from the duration
    assert not r.truncated and r.skipped_packets == 0


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_variable_frame_rate_gives_real_times(tmp_path, ext):
    times = [0, 40, 80, 200, 240, 400, 410, 420, 600, 640, 680, 1000, 1040, 1080, 1120, 1160,
             1400, 1440, 1480, 1520]
    path = write_video(tmp_path / f"vfr.{ext}", n=len(times), pts_ms=times)
    r, got, pts = check(path, len(times))
    assert got == list(range(len(times)))
    np.testing.assert_allclose(pts, np.array(times) / 1000, atol=1e-9)
    assert len(set(np.round(np.diff(pts), 3))) > 3  # really uneven


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_phone_video_is_upright(tmp_path, rotation):
    path = write_video(tmp_path / f"rot{rotation}.mp4", n=12, rotation=rotation)
    r, got, _ = check(path, 12, rotation=rotation)
    assert got == list(range(12))
    assert (r.info.width, r.info.height) == (W, H)  # display size: upright frames
    assert (r.info.coded_width, r.info.coded_height) == ((H, W) if rotation % 180 else (W, H))
    assert r.info.rotation == rotation % 360


def test_anamorphic_is_resampled_to_square_pixels(tmp_path):
    path = write_video(tmp_path / "anamorphic.mp4", n=12, sar=Fraction(4, 3))
    r, got, _ = check(path, 12, sar=Fraction(4, 3))
    assert got == list(range(12))
    assert (r.info.coded_width, r.info.width, r.info.height) == (120, W, H)
    assert r.info.sample_aspect_ratio == "4:3"


def test_interlaced(tmp_path):
    path = write_video(tmp_path / "interlaced.mp4", n=20, options={"flags": "+ilme+ildct", "x264-params": "interlaced=1"})
    r, got, _ = check(path, 20)
    assert got == list(range(20)) and r.info.interlaced


def test_starts_mid_gop(tmp_path):
    """The first (key)frame is missing: the decoder drops everything up to the next keyframe.
    Frames are numbered from the first decodable one and the timestamps show the loss."""
    src = write_video(tmp_path / "src.mp4", n=48, options={"g": "12", "bf": "2"})
    path = remux_packets(src, tmp_path / "mid_gop.mp4", drop=1)
    r, got, pts = check(path, 48)
    assert got[0] > 0 and got == list(range(got[0], 48))
    assert pts[0] == pytest.approx(got[0] * 0.04)
    assert r.truncated and f"only {len(got)} of 47 reported frames decodable" in r.truncated_reason


def test_corrupt_first_packets(tmp_path):
    src = write_video(tmp_path / "src.mp4", n=48, options={"g": "12", "bf": "2"})
    path = remux_packets(src, tmp_path / "corrupt.mp4", corrupt=2)
    r, got, pts = check(path, 48)
    assert got == list(range(got[0], 48)) and r.skipped_packets >= 1
    assert "packets undecodable" in r.truncated_reason


def test_every_packet_corrupt(tmp_path):
    src = write_video(tmp_path / "src.mp4", n=12, options={"g": "100"})
    path = remux_packets(src, tmp_path / "garbage.mp4", corrupt=12)
    with pytest.raises(DecodeError, match=r"zero frames decodable \(the decoder rejected all \d+ packets\)"):
        ChunkedVideoReader(path)


def test_single_frame(tmp_path):
    r, got, pts = check(write_video(tmp_path / "one.mp4", n=1), 1)
    assert got == [0] and list(pts) == [0.0] and r.info.reported_frames == 1


def test_4k_chunks_are_bounded_by_bytes(tmp_path):
    size = (3840, 2160)
    path = write_video(tmp_path / "4k.mp4", n=6, size=size, options={"preset": "ultrafast"})
    with ChunkedVideoReader(path, chunk_frames=32) as r:
        assert (r.info.width, r.info.height) == size
        assert r.chunk_frames == MAX_CHUNK_BYTES // (3840 * 2160 * 3) == 1
        sizes = []
        for c in r.chunks():
            assert c.frames.nbytes <= MAX_CHUNK_BYTES
            assert which(c.frames[0], [source_frame(i, *size) for i in range(6)]) == c.start
            sizes.append(len(c.frames))
    assert sizes == [1] * 6


def test_audio_only_matroska(tmp_path):
    path = tmp_path / "audio.mka"
    with av.open(str(path), "w") as c:
        s = c.add_stream("flac", rate=8000)
        s.layout = "mono"
        for k in range(4):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.int16), format="s16", layout="mono")
            f.sample_rate, f.pts = 8000, k * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(DecodeError, match=r"no video stream in the container \(streams: audio flac\)"):
        ChunkedVideoReader(str(path))


def test_unsupported_codec(tmp_path):
    """A Matroska track whose codec id no decoder knows."""
    data = open(write_video(tmp_path / "h264.mkv", n=4), "rb").read()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    (tmp_path / "odd.mkv").write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/XYZ"))
    with pytest.raises(DecodeError, match="unsupported video codec"):
        ChunkedVideoReader(str(tmp_path / "odd.mkv"))


def test_resolution_change_is_scaled_to_the_first_size(tmp_path):
    """Two MPEG-TS streams (160x96 then 320x192) concatenated byte-wise, as broadcast captures are."""
    a = write_video(tmp_path / "a.ts", n=10)
    b = write_video(tmp_path / "b.ts", n=10, size=(2 * W, 2 * H), frame=lambda i, w, h: source_frame(i + 10, w, h))
    path = tmp_path / "ab.ts"
    path.write_bytes(open(a, "rb").read() + open(b, "rb").read())
    r, frames, _ = read_all(str(path))
    assert (r.info.width, r.info.height) == (W, H) and len(frames) == 20
    sources = [source_frame(i) for i in range(20)]
    assert [which(f, sources) for f in frames] == list(range(20))


def test_chunks_iterate_once(tmp_path):
    with ChunkedVideoReader(write_video(tmp_path / "a.mp4", n=3)) as r:
        assert sum(len(c.frames) for c in r.chunks()) == 3
        with pytest.raises(RuntimeError):
            list(r.chunks())


# ------------------------------------------------------------------- memory


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024


@pytest.mark.slow
def test_memory_of_a_5_minute_480p_title_behind_a_slow_consumer(tmp_path):
    """Generated frame by frame (never in memory), read behind a consumer slower than the
    decoder (as the face detector is). Prints peak RSS growth; decord grew by GBs here."""
    def frame(i, w, h):
        img = source_frame(i, w, h)
        x = (7 * i) % (w - 100)
        img[100:200, x:x + 100] = 255
        return img
    path = write_video(tmp_path / "long.mp4", n=7500, size=(854, 480), frame=frame,
                       options={"preset": "veryfast"})
    for threads in (0, 1, 2):
        base, peak, done = rss_mb(), [0.0], threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb())
                time.sleep(0.05)
        t = threading.Thread(target=watch)
        t.start()
        t0, n = time.perf_counter(), 0
        with ChunkedVideoReader(path, chunk_frames=32, num_threads=threads) as r:
            for k, c in enumerate(r.chunks()):
                n += len(c.frames)
                if k < 40:
                    time.sleep(0.25)  # slow consumer for the first 1280 frames
        done.set()
        t.join()
        print(f"num_threads={threads}: {n} frames, peak RSS growth {peak[0] - base:.0f} MB "
              f"(base {base:.0f} MB, {time.perf_counter() - t0:.1f} s incl. 10 s of sleeps)")
        assert n == 7500
        assert peak[0] - base < 400
    os.remove(path)


# ------------------------------------------------------------------- end to end


def face_frame_maker():
    """A head photo drifting right over a still background (no cuts), upright in display space."""
    import cv2
    from harvest.samples import load_identities
    photo = np.ascontiguousarray(load_identities()[0][0][:, :, ::-1])  # BGR -> RGB
    head = cv2.resize(photo, (110, 150), interpolation=cv2.INTER_AREA)
    hh, hw = head.shape[:2]

    def frame(i, w, h):
        img = np.empty((h, w, 3), np.uint8)
        img[...] = np.linspace(40, 200, w).astype(np.uint8)[None, :, None]
        img[..., 2] = 90 + i % 5
        x, y = (w - hw) // 4 + i, (h - hh) // 2
        img[y:y + hh, x:x + hw] = head
        return img
    return frame


def audio_only(path):
    with av.open(str(path), "w", format="matroska") as c:
        s = c.add_stream("flac", rate=8000)
        s.layout = "mono"
        f = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.int16), format="s16", layout="mono")
        f.sample_rate, f.pts = 8000, 0
        for p in [*s.encode(f), *s.encode()]:
            c.mux(p)
    return str(path)


@pytest.fixture(scope="module")
def format_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats")
    face = face_frame_maker()
    size = (320, 240)
    good = {
        "h264.mp4": dict(),
        "hevc10.mkv": dict(codec="libx265", pix_fmt="yuv420p10le", options={"x265-params": "log-level=none"}),
        "vp9.webm": dict(codec="libvpx-vp9"),
        "av1.mkv": dict(codec="libsvtav1", options={"svtav1-params": "log-level=0"}),
        "vfr.mkv": dict(pts_ms=[0, 40, 80, 200, 240, 400, 410, 420] + [440 + 40 * k for k in range(32)]),
        "rot90.mp4": dict(rotation=90),
        "anamorphic.mp4": dict(sar=Fraction(4, 3)),
        "interlaced.mp4": dict(options={"flags": "+ilme+ildct", "x264-params": "interlaced=1"}),
        "one_frame.mp4": dict(n=1),
        "uhd.mp4": dict(n=3, size=(3840, 2160), options={"preset": "ultrafast"}),
    }
    made = {}
    for name, kw in good.items():
        if kw.get("codec", "libx264") in ("libsvtav1",) and not has_encoder(kw["codec"]):
            continue
        kw = {"n": 40, "size": size, "frame": face, **kw}
        made[name] = write_video(d / name, **kw)
    src = write_video(d.parent / "mid_gop_src.mp4", n=48, size=size, frame=face, options={"g": "12", "bf": "2"})
    made["mid_gop.mp4"] = remux_packets(src, d / "mid_gop.mp4", drop=1)
    audio_only(d / "audio_only.mkv")
    data = open(write_video(d.parent / "h264.mkv", n=4, size=size, frame=face), "rb").read()
    (d / "unknown_codec.mkv").write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/XYZ"))
    remux_packets(src, d / "garbage.mp4", corrupt=48)
    failed = {"audio_only.mkv": "no video stream", "unknown_codec.mkv": "unsupported video codec",
              "garbage.mp4": "zero frames decodable"}
    return d, made, failed


def test_harvest_run_over_formats(format_dir, tmp_path, ray_cluster):
    import pyarrow.parquet as pq
    from harvest.cli import EXIT_TITLES_FAILED, main
    from harvest.dataset.schema import read_metadata, shard_schema
    has_timestamps = "timestamps" in shard_schema(8).names  # the per-face timestamps column
    d, made, failed = format_dir
    out = tmp_path / "out"
    code = main(["run", "--input", str(d), "--output", str(out), "--models", need(FACE_PACK),
                 "--no-progress", "--workers", "2"])
    assert code == EXIT_TITLES_FAILED  # a normal exit: the bad titles are failed records
    recs = {}
    for name in os.listdir(out / "manifest"):
        rec = json.loads((out / "manifest" / name).read_text())
        recs[rec["source"].rsplit("/", 1)[-1]] = rec
    assert set(recs) == set(made) | set(failed)
    timed = 0
    for name, why in failed.items():
        assert recs[name]["status"] == "failed" and why in recs[name]["error"], recs[name]
        assert "Traceback" not in recs[name]["error"]
    for name, path in made.items():
        rec = recs[name]
        assert rec["status"] == "done", (name, rec["error"])
        ref_frames, ref_times = pyav_decode(path)
        assert rec["frames"] == len(ref_frames), name
        shard = pq.read_table(os.path.join(out, rec["shard_path"]) if not os.path.isabs(rec["shard_path"])
                              else rec["shard_path"])
        meta = read_metadata(shard.schema)
        with ChunkedVideoReader(path) as r:
            info = r.info
        assert (meta["width"], meta["height"], meta["rotation"], meta["sample_aspect_ratio"]) == \
            (info.width, info.height, info.rotation, info.sample_aspect_ratio)
        for row in shard.to_pylist():
            idx = np.array(row["frame_idx"])
            assert ((0 <= idx) & (idx < rec["frames"])).all(), name
            if has_timestamps:
                np.testing.assert_allclose(row["timestamps"], ref_times[idx], atol=1e-6, err_msg=name)
                timed += len(idx)
        if name not in ("one_frame.mp4", "uhd.mp4"):
            assert rec["faces"] > 0, f"{name}: no face found"
    assert recs["rot90.mp4"]["faces"] >= recs["h264.mp4"]["faces"] * 0.8  # upright, as detectable
    assert timed > 0 or not has_timestamps
