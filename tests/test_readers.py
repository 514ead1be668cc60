"""Reader registry (harvest.video.readers): the choice rules, the CPU fallback with its reason, and
frames handed on as device tensors (the path NVDEC frames take), tested on the CPU.

The NVDEC reader itself needs an NVIDIA GPU and PyNvVideoCodec; here its rules are tested on real
streams' probes, and the tensor-frame pipeline it feeds is tested through the CPU reader."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from harvest.video.decode import ChunkedVideoReader  # noqa: E402
from harvest.video.readers import READERS, PyAVReader, choices, open_reader, validate_name  # noqa: E402
from harvest.video.nvdec import NvdecReader  # noqa: E402
from harvest.video.shots import ShotDetector, frame_signatures  # noqa: E402

from conftest import CROWD, OPEN_GOP, need  # noqa: E402
from test_formats import write_video  # noqa: E402

CUDA = torch.device("cuda")        # a device object only: nothing here touches a GPU
HAVE_NVC = __import__("importlib").util.find_spec("PyNvVideoCodec") is not None


def probe(path) -> "ChunkedVideoReader":
    with ChunkedVideoReader(str(path)) as r:
        return r.info


def test_registry_names_and_validation():
    assert choices() == ["auto", "nvdec", "pyav"]
    assert [r.name for r in sorted(READERS, key=lambda r: r.priority)] == ["nvdec", "pyav"]
    validate_name("pyav")
    with pytest.raises(ValueError, match="unknown decoder"):
        validate_name("decord")
    with pytest.raises(ValueError, match="unknown decoder"):
        open_reader(need(CROWD), decoder="decord")


def test_nvdec_rules_on_real_streams(tmp_path):
    crowd = probe(need(CROWD))
    assert NvdecReader.unusable(crowd, None) == "the face backend takes its frames on the CPU"
    assert NvdecReader.unusable(crowd, torch.device("cpu")) == \
        "the face backend takes its frames on the CPU"
    assert NvdecReader.unusable(crowd, CUDA) == ("" if HAVE_NVC else "PyNvVideoCodec is not installed")
    assert PyAVReader.unusable(crowd, CUDA) == ""
    rotated = probe(write_video(tmp_path / "rot.mp4", n=8, rotation=90))
    assert "display rotation 90" in NvdecReader.unusable(rotated, CUDA)
    squeezed = probe(write_video(tmp_path / "sar.mp4", n=8, sar=Fraction(4, 3)))
    assert "non-square pixels" in NvdecReader.unusable(squeezed, CUDA)
    ten_bit = probe(write_video(tmp_path / "x10.mkv", n=8, codec="libx265", pix_fmt="yuv420p10le",
                                options={"x265-params": "log-level=none"}))
    assert "pixel format 'yuv420p10le'" in NvdecReader.unusable(ten_bit, CUDA)
    mjpeg = probe(write_video(tmp_path / "m.avi", n=8, codec="mjpeg", pix_fmt="yuvj420p"))
    assert "codec 'mjpeg'" in NvdecReader.unusable(mjpeg, CUDA)
    interlaced = probe(write_video(tmp_path / "i.mp4", n=8, options={
        "flags": "+ilme+ildct", "x264-params": "interlaced=1"}))
    assert NvdecReader.unusable(interlaced, CUDA) == "interlaced stream"


def test_nvdec_takes_containers_by_the_probe_not_the_codec_alone(tmp_path):
    """MPEG-2 video is on NVDEC's codec list, but SimpleDecoder reads indexed, seekable
    containers: in MP4 the stream is taken; in an MPEG-TS broadcast file the CPU reader decodes
    it, and says why. The container comes from the CPU probe."""
    installed = "" if HAVE_NVC else "PyNvVideoCodec is not installed"
    mp4 = probe(write_video(tmp_path / "m2.mp4", n=8, codec="mpeg2video"))
    assert (mp4.codec, mp4.container) == ("mpeg2video", "mov,mp4,m4a,3gp,3g2,mj2")
    assert NvdecReader.unusable(mp4, CUDA) == installed
    ts_path = write_video(tmp_path / "m2.ts", n=8, codec="mpeg2video")
    ts = probe(ts_path)
    assert (ts.codec, ts.container) == ("mpeg2video", "mpegts")
    assert NvdecReader.unusable(ts, CUDA).startswith("container 'mpegts' (SimpleDecoder reads")
    mkv = probe(write_video(tmp_path / "h.mkv", n=8))
    assert mkv.container == "matroska,webm" and NvdecReader.unusable(mkv, CUDA) == installed
    with open_reader(ts_path, decoder="nvdec", device=CUDA) as r:
        assert r.name == "pyav" and r.fallback.startswith("nvdec: container 'mpegts'")


def test_cpu_reader_is_used_with_the_reason_when_nvdec_cannot_be(tmp_path):
    rotated = write_video(tmp_path / "rot.mp4", n=8, rotation=90)
    with open_reader(rotated, decoder="nvdec", device=CUDA) as r:
        assert isinstance(r, PyAVReader) and r.name == "pyav"
        assert r.fallback.startswith("nvdec: display rotation 90")
    with open_reader(need(CROWD), decoder="auto", device=None) as r:       # a CPU run: no noise
        assert r.name == "pyav" and r.fallback == ""
    if not HAVE_NVC:
        with open_reader(need(CROWD), decoder="auto", device=CUDA) as r:
            assert r.name == "pyav" and r.fallback == "nvdec: PyNvVideoCodec is not installed"


@pytest.mark.parametrize("video", [OPEN_GOP, CROWD])
def test_tensor_frames_are_the_numpy_frames(video):
    """With a device the CPU reader hands on the same frames, numbering, chunks and times as
    torch tensors on that device (here the CPU), and the shot signatures computed from them on
    the device equal OpenCV's from the numpy frames (exact for these 16:9 sizes)."""
    path = need(video)
    with open_reader(path, decoder="pyav") as a, \
            open_reader(path, decoder="pyav", device=torch.device("cpu")) as b:
        n = 0
        for ca, cb in zip(a.chunks(), b.chunks(), strict=True):
            assert isinstance(ca.frames, np.ndarray) and isinstance(cb.frames, torch.Tensor)
            assert cb.frames.dtype == torch.uint8 and cb.start == ca.start == n
            assert np.array_equal(cb.frames.numpy(), ca.frames)
            assert np.array_equal(cb.pts, ca.pts)
            for sa, sb in zip(frame_signatures(ca.frames), frame_signatures(cb.frames)):
                assert np.array_equal(sa, sb)
            n = ca.stop
        assert n == a.frames_read == b.frames_read > 0
        assert (a.truncated, a.truncated_reason) == (b.truncated, b.truncated_reason)


def test_shot_boundaries_from_tensor_frames(tmp_path):
    """A title with cuts: the shot detector gives the same boundaries from device tensors."""
    from harvest.samples import make_clip
    title = str(tmp_path / "cuts.mp4")
    make_clip(title)
    found = []
    for device in (None, torch.device("cpu")):
        shots = ShotDetector()
        with open_reader(title, device=device) as r:
            for chunk in r.chunks():
                shots.update(chunk.start, chunk.frames)
        found.append(shots.boundaries)
    assert len(found[0]) > 1 and found[0] == found[1]


def test_run_options_and_cli_validate_the_reader_and_slots():
    from harvest.cli import options_from, parse
    from harvest.config import RunOptions
    with pytest.raises(ValueError, match="unknown decoder"):
        RunOptions(decoder="decord")
    with pytest.raises(ValueError, match="titles_per_worker"):
        RunOptions(titles_per_worker=0)
    args = parse(["run", "--input", "in", "--output", "out", "--decoder", "nvdec",
                  "--titles-per-worker", "4", "--gpus-per-worker", "1"])
    opts = options_from(args)
    assert (opts.decoder, opts.titles_per_worker, opts.gpus_per_worker) == ("nvdec", 4, 1.0)
    with pytest.raises(SystemExit):
        parse(["run", "--input", "in", "--output", "out", "--decoder", "decord"])


def test_detector_batches_span_decode_chunks(tmp_path):
    """1080p chunks hold 4 frames (24 MiB); detector batches are filled across chunks, so a
    GPU batch of 64 is not cut to 4. The CPU onnxruntime backend prefers one frame per call."""
    from harvest.config import HarvestConfig, RunOptions
    from harvest.faces.insightface_backend import InsightFaceBackend
    from harvest.title.pipeline import harvest_title
    from conftest import FACE_PACK

    class Recording(InsightFaceBackend):
        sizes: list = []

        def _detect(self, frames):
            self.sizes.append(len(frames))
            return super()._detect(frames)

    backend = Recording(need(FACE_PACK), threads=2)
    assert backend.preferred_batches == (1, 64)
    config = HarvestConfig(models=need(FACE_PACK), det_stride=3)
    with open_reader(need(CROWD)) as r:
        assert r.chunk_frames == 4 and r.info.height == 1080
    result = harvest_title(need(CROWD), backend, config, RunOptions(det_batch=8,
                                                                    scratch_dir=str(tmp_path)))
    result.tracks.close()
    picked = len(range(0, result.frames, 3))                  # 35 of 105 frames
    assert sum(Recording.sizes) == picked
    assert Recording.sizes == [8] * (picked // 8) + ([picked % 8] if picked % 8 else [])
