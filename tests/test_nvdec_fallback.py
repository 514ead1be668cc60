"""NVDEC failures on CPU, by fault injection: a title the nvdec reader cannot finish is harvested
again by the CPU reader from frame 0 (same shard as a CPU-only run, the reason in
``decoder_fallback``); a frame whose ``getPTS`` fails is timed from the frame rate and noted.

There is no GPU and no PyNvVideoCodec here. ``FakeSimpleDecoder`` stands in for PyNvVideoCodec's
``SimpleDecoder`` (only to inject faults): it hands on the frames PyAV decodes, as DLPack-capable
frames with ``getPTS``, and then fails as told. ``fake_nvdec`` is the nvdec reader with that
decoder, usable on a CPU device (the stream rules still apply) and put in the reader registry in
place of the real one for one test.
"""
from __future__ import annotations

import os

import av
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from harvest.video import readers  # noqa: E402
from harvest.video.decode import ChunkedVideoReader, ReaderFailed  # noqa: E402
from harvest.video.nvdec import NvdecReader  # noqa: E402

from conftest import FACE_PACK, need  # noqa: E402
from test_formats import write_video  # noqa: E402

CPU = torch.device("cpu")
INJECTED = "CUDA_ERROR_ILLEGAL_ADDRESS in cuvidDecodePicture (injected)"


class FakeFrame:
    """A decoded frame as SimpleDecoder hands it on: DLPack (here a CPU tensor) and getPTS."""

    def __init__(self, rgb: np.ndarray, pts: int, pts_fails: bool):
        self._rgb, self._pts, self._pts_fails = torch.from_numpy(rgb), pts, pts_fails

    def __dlpack__(self, *args, **kwargs):
        return self._rgb.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._rgb.__dlpack_device__()

    def getPTS(self) -> int:  # noqa: N802 - PyNvVideoCodec's name
        if self._pts_fails:
            raise RuntimeError("no timestamp for this surface (injected)")
        return self._pts


class FakeSimpleDecoder:
    """The title decoded sequentially by PyAV (RGB), handed on in batches like
    ``SimpleDecoder.get_batch_frames``; faults: ``fail_after`` (a decoder error on the first call
    once that many frames are out), ``end_after`` (the stream ends silently after that many
    frames) and ``pts_fail_from`` (``getPTS`` fails from that frame on)."""

    def __init__(self, path: str, fail_after=None, end_after=None, pts_fail_from=None):
        self.fail_after, self.end_after, self.pts_fail_from = fail_after, end_after, pts_fail_from
        self._container = av.open(path)
        self._frames = self._container.decode(video=0)
        self.delivered, self.failed = 0, False

    def get_batch_frames(self, n: int) -> list:
        if self.fail_after is not None and self.delivered >= self.fail_after:
            self.failed = True
            raise RuntimeError(INJECTED)
        out = []
        if self.delivered == self.end_after:
            return out
        for frame in self._frames:
            k = self.delivered
            out.append(FakeFrame(frame.to_ndarray(format="rgb24"), frame.pts,
                                 self.pts_fail_from is not None and k >= self.pts_fail_from))
            self.delivered += 1
            if len(out) == n or self.delivered == self.end_after:
                break
        return out


def fake_nvdec(**faults) -> type:
    """The nvdec reader with a ``FakeSimpleDecoder(**faults)``, usable for a CPU device."""
    class FakeNvdec(NvdecReader):
        decoders: list = []

        @classmethod
        def unusable(cls, info, device) -> str:
            return cls.stream_unusable(info)      # the stream rules; no GPU, no PyNvVideoCodec

        def _open_decoder(self):
            self.decoders.append(FakeSimpleDecoder(self.path, **faults))
            return self.decoders[-1]
    return FakeNvdec


@pytest.fixture
def registry(monkeypatch):
    """``registry(reader_class)``: the reader registry with that class as its nvdec reader."""
    def install(cls):
        monkeypatch.setattr(readers, "READERS", (cls, readers.PyAVReader))
        return cls
    return install


def cpu_frames(path: str):
    with ChunkedVideoReader(path, chunk_frames=8) as r:
        chunks = list(r.chunks())
    return np.concatenate([c.frames for c in chunks]), np.concatenate([c.pts for c in chunks])


def test_nvdec_reader_times_frames_without_pts_from_the_rate_and_says_so(tmp_path, registry):
    """The fake hands on PyAV's frames, so the nvdec reader's frames and getPTS times equal the CPU
    reader's. Frames whose getPTS fails get the previous time + 1/fps, and ``fallback`` (the
    shard's ``decoder_fallback``) counts them and names the error."""
    path = write_video(tmp_path / "v.mp4", n=24, fps=25)
    want, want_pts = cpu_frames(path)
    for faults, note in (({}, ""), ({"pts_fail_from": 10}, (
            "nvdec: getPTS failed for 14 of 24 frames (first at frame 10: RuntimeError: no "
            "timestamp for this surface (injected)); their times come from the frame rate"))):
        registry(fake_nvdec(**faults))
        with readers.open_reader(path, decoder="nvdec", device=CPU, chunk_frames=8) as r:
            assert r.name == "nvdec" and r.fallback == ""
            chunks = list(r.chunks())
            assert r.fallback == note and r.frames_read == 24 and not r.truncated
        assert [c.start for c in chunks] == [0, 8, 16]
        assert all(isinstance(c.frames, torch.Tensor) and c.frames.device == CPU for c in chunks)
        assert np.array_equal(torch.cat([c.frames for c in chunks]).numpy(), want)
        pts = np.concatenate([c.pts for c in chunks])
        k = faults.get("pts_fail_from", 24)
        assert np.array_equal(pts[:k], want_pts[:k])
        np.testing.assert_allclose(pts[k:], want_pts[k - 1] + np.arange(1, 25 - k) / 25.0)


def test_nvdec_failing_or_ending_early_hands_the_title_to_the_cpu_reader(tmp_path, registry):
    """A decoder error mid-stream, or a stream that ends more than tail_slack frames short, is
    ReaderFailed; ``read_title`` then runs the title again with the CPU reader from frame 0,
    ``fallback`` naming the error. A CPU reader's own failure is not retried."""
    path = write_video(tmp_path / "v.mp4", n=24, fps=25)
    want, _ = cpu_frames(path)

    def run(reader):
        seen.append(reader.name)
        return torch.cat([torch.as_tensor(c.frames) for c in reader.chunks()]).numpy(), reader

    for faults, error in (({"fail_after": 10}, f"NVDEC failed after 16 frames (RuntimeError: "
                                               f"{INJECTED})"),
                          ({"end_after": 10}, "NVDEC ended early: only 10 of 24 reported frames "
                                              "decodable")):
        fake = registry(fake_nvdec(**faults))
        seen = []
        with readers.open_reader(path, decoder="nvdec", device=CPU, chunk_frames=8) as r:
            with pytest.raises(ReaderFailed, match="NVDEC"):
                list(r.chunks())
        frames, reader = readers.read_title(path, run, decoder="nvdec", device=CPU,
                                            chunk_frames=8)
        assert seen == ["nvdec", "pyav"] and fake.decoders[-1].delivered >= 10
        assert reader.name == "pyav" and np.array_equal(frames, want)
        assert reader.fallback == f"nvdec: {error}; decoded again by pyav from frame 0"

    def cpu_fails(reader):
        raise ReaderFailed("not retried")
    with pytest.raises(ReaderFailed, match="not retried"):
        readers.read_title(path, cpu_fails, decoder="pyav")


def test_a_title_nvdec_cannot_finish_is_harvested_again_on_the_cpu(tmp_path, registry):
    """The whole title pipeline (a worker, the torch backend on CPU taking tensor frames) on a real
    video: NVDEC fails mid-stream, in the second shot (frame 24, the first shot's faces already
    tracked). The title is done,
    decoded by pyav, ``decoder_fallback`` names the NVDEC error, the shard's rows equal a plain CPU
    run's (nothing of the aborted pass kept) and no scratch file is left. A pass whose getPTS fails
    is kept, with the note, and the same rows but for the timestamps."""
    import pyarrow.parquet as pq
    from harvest.config import HarvestConfig, RunOptions
    from harvest.samples import ShotSpec, make_clip
    from harvest.dataset.schema import read_metadata
    from harvest.run.sources import list_sources
    from harvest.run.worker import TitleWorker

    title = str(tmp_path / "two_shots.mp4")
    truth = make_clip(title, [ShotSpec((0, 1), 20, 1), ShotSpec((2,), 20, 2)], width=320,
                      height=180, face_size=(66, 90))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    config = HarvestConfig(backend="torch", models=need(FACE_PACK), det_stride=2, det_size=320)
    worker = TitleWorker(str(tmp_path / "out"), config,
                         RunOptions(chunk_frames=8, scratch_dir=str(scratch)), threads=2)
    source = list_sources(title)[0]

    def harvest():
        record = worker.process(source)
        assert record["status"] == "done", record["error"]
        assert os.listdir(scratch) == []
        table = pq.read_table(record["shard_path"])
        return read_metadata(table.schema), table.replace_schema_metadata(None)

    meta, plain = harvest()                   # auto on a CPU backend: the CPU reader
    assert (meta["decoder"], meta["decoder_fallback"]) == ("pyav", "")
    assert plain.num_rows >= 3 and set(plain["shot_id"].to_pylist()) == {0, 1}

    failing = registry(fake_nvdec(fail_after=truth.shot_boundaries[1] + 4))   # fails at frame 24
    meta, table = harvest()
    assert failing.decoders[0].failed and failing.decoders[0].delivered == 24
    assert meta["decoder"] == "pyav"
    assert meta["decoder_fallback"] == (f"nvdec: NVDEC failed after 24 frames (RuntimeError: "
                                        f"{INJECTED}); decoded again by pyav from frame 0")
    assert table.equals(plain)
    assert meta["frame_count"] == 40 and meta["shot_boundaries"] == [0, 20]

    registry(fake_nvdec(pts_fail_from=0))
    meta, table = harvest()
    assert meta["decoder"] == "nvdec"
    assert meta["decoder_fallback"].startswith("nvdec: getPTS failed for 40 of 40 frames")
    same = [c for c in plain.column_names if c != "timestamps"]
    assert table.select(same).equals(plain.select(same))
    for got, want in zip(table["timestamps"].to_pylist(), plain["timestamps"].to_pylist()):
        np.testing.assert_allclose(got, want, atol=1e-9)
