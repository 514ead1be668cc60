"""Remote URLs through fsspec: videos staged from S3 and shards written to S3 (a local moto server)."""
import json
import socket
import urllib.request

import pyarrow.parquet as pq
import pytest

from conftest import write_no_face_video

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def s3(monkeypatch):
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # moto's buckets live in this process, not in the server: start every test empty
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"))
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("bucket")
    s3fs.S3FileSystem.clear_instance_cache()
    yield fs
    server.stop()


def test_s3_in_s3_out(s3, tmp_path):
    from harvest.config import HarvestConfig
    from harvest.run.sources import list_sources
    from harvest.dataset.validate import validate_output
    from harvest.run.worker import TitleWorker
    from harvest.samples import ShotSpec, make_clip

    make_clip(str(tmp_path / "clip.mp4"), [ShotSpec((0, 1), 30, 0), ShotSpec((1, 2), 30, 1)])
    write_no_face_video(str(tmp_path / "blank.mp4"))
    s3.put(str(tmp_path / "clip.mp4"), "bucket/movies/clip.mp4")
    s3.put(str(tmp_path / "blank.mp4"), "bucket/movies/blank.mp4")
    s3.pipe("bucket/movies/readme.txt", b"not listed: not a video extension")
    sources = list_sources("s3://bucket/movies/")
    assert [s.basename for s in sources] == ["blank.mp4", "clip.mp4"]
    assert all(s.uri.startswith("s3://") and s.size > 0 for s in sources)
    worker = TitleWorker("s3://bucket/out", HarvestConfig(backend="dlib"))
    records = [worker.process(s) for s in sources]
    assert [r["status"] for r in records] == ["done", "done"], [r["error"] for r in records]
    clip = records[1]
    assert clip["valid_tracks"] >= 4 and clip["cannot_link_pairs"] >= 1
    with s3.open(clip["shard_path"], "rb") as f:
        assert pq.read_table(f).num_rows == clip["tracks"]
    stored = json.loads(s3.cat(f"bucket/out/manifest/{clip['title_id']}.json"))
    assert stored["shard_sha256"] == clip["shard_sha256"]
    report = validate_output("s3://bucket/out")
    assert report["n_shards"] == 2 and not any(report["shards"].values())


def test_a_remote_model_pack_staged_by_two_workers_at_once(s3, tmp_path, monkeypatch):
    """Two workers of a node stage one remote pack at the same moment (forced: each waits in its
    first download until the other is in its own): both get the whole pack, nothing partial or
    temporary is left beside it, and a later call reuses the copy without downloading."""
    import hashlib
    import os
    import threading

    from conftest import FACE_PACK, need
    from harvest.faces.registry import stage_models
    pack = need(FACE_PACK)
    files = sorted(f for f in os.listdir(pack) if f.endswith(".onnx"))
    for f in files:
        s3.put_file(os.path.join(pack, f), f"bucket/pack/{f}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    barrier, calls = threading.Barrier(2, timeout=60), []
    real_get_file = s3fs.S3FileSystem.get_file

    def get_file(self, rpath, lpath, **kwargs):
        calls.append(rpath)
        if len(calls) <= 2:
            barrier.wait()
        return real_get_file(self, rpath, lpath, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "get_file", get_file)
    staged, errors = [], []

    def stage():
        try:
            staged.append(stage_models("s3://bucket/pack"))
        except Exception as e:       # noqa: BLE001 - reported below
            errors.append(e)

    workers = [threading.Thread(target=stage) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not errors and len(staged) == 2 and len(set(staged)) == 1, errors
    cache = staged[0]
    assert len(calls) == 2 * len(files)                       # both downloaded
    assert sorted(os.listdir(cache)) == files
    sha = lambda p: hashlib.sha256(open(p, "rb").read()).hexdigest()  # noqa: E731
    assert [sha(os.path.join(cache, f)) for f in files] == [sha(os.path.join(pack, f)) for f in files]
    assert os.listdir(os.path.dirname(cache)) == [os.path.basename(cache)]
    assert stage_models("s3://bucket/pack") == cache and len(calls) == 2 * len(files)
    with pytest.raises(FileNotFoundError, match="no .onnx model files"):
        stage_models("s3://bucket/no-pack")
