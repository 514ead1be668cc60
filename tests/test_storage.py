"""harvest.dataset.storage: layout, round trips and atomic writes on local paths, file:// and memory://."""
from __future__ import annotations

import hashlib
import os
import json
import uuid

import pyarrow as pa
import pytest

from harvest.dataset import schema as S
from harvest.dataset import storage

D = 4


def _table(title_id="t1", n_tracks=2):
    meta = {k: None for k in S.METADATA_FIELDS}
    meta.update(title_id=title_id, embedding_dim=D, shot_boundaries=[0], frame_count=10)
    schema = S.with_metadata(S.shard_schema(D), meta)
    v = [1.0, 0.0, 0.0, 0.0]
    rows = [{"title_id": title_id, "track_id": i, "shot_id": 0, "n_faces": 1,
             "frame_idx": [i], "timestamps": [i / 25], "boxes": [[0, 0, 1, 1]],
             "interp_frame_idx": [], "interp_boxes": [], "landmarks": [[0.0] * 10],
             "det_score": [1.0], "face_size": [1.0], "blur": [1.0], "embeddings": [v],
             "mean_embedding": v, "tracklets": None, "tracklet_members": [],
             "crops": [], "crop_positions": [],
             "cannot_link": [], "hard_negative": None, "track_quality": 1.0,
             "is_valid": False, "invalid_reason": "short"} for i in range(n_tracks)]
    return pa.Table.from_pylist(rows, schema=schema)


@pytest.fixture(params=["local", "file", "memory"])
def url(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "out")
    elif request.param == "file":
        yield f"file://{tmp_path}/out"
    else:
        u = f"memory://storage-test-{uuid.uuid4().hex}/out"
        yield u
        fs, root = storage.open_fs(u)
        if fs.exists(root):
            fs.rm(root, recursive=True)


def test_open_fs_and_paths(url):
    fs, root = storage.open_fs(url)
    assert not root.endswith("/") and "://" not in root
    assert storage.shard_path(root, "abc") == f"{root}/shards/abc.parquet"
    assert storage.record_path(root, "abc") == f"{root}/manifest/abc.json"
    assert storage.open_fs(url + "/")[1] == root


def test_shard_round_trip(url):
    fs, root = storage.open_fs(url)
    table = _table()
    path, sha = storage.write_shard(fs, root, table)
    assert path == storage.shard_path(root, "t1")
    data = fs.cat_file(path)
    assert sha == hashlib.sha256(data).hexdigest() == storage.sha256_bytes(data)
    back = storage.read_shard(fs, path)
    assert back.equals(table)
    assert S.read_metadata(back.schema)["title_id"] == "t1"
    # Writing the same table again gives the same bytes (re-runs leave shards byte-identical).
    assert storage.write_shard(fs, root, table)[1] == sha
    assert storage.list_shards(fs, root) == {"t1": path}


def test_write_shard_refuses_mixed_titles(url):
    fs, root = storage.open_fs(url)
    bad = _table().set_column(0, S.shard_schema(D).field("title_id"),
                              pa.array(["t1", "t2"]))
    with pytest.raises(ValueError):
        storage.write_shard(fs, root, bad)


def test_records_and_manifest(url):
    fs, root = storage.open_fs(url)
    assert storage.read_records(fs, root) == {}
    for tid in ("b", "a", "c"):
        rec = dict.fromkeys(S.MANIFEST_FIELDS)
        rec.update(title_id=tid, status=S.STATUS_DONE)
        storage.write_record(fs, root, rec)
    storage.write_record(fs, root, dict(rec, status=S.STATUS_FAILED))  # overwrite "c"
    records = storage.read_records(fs, root)
    assert sorted(records) == ["a", "b", "c"] and records["c"]["status"] == S.STATUS_FAILED
    for arg in (records, list(records.values())):
        path = storage.write_manifest(fs, root, arg)
        lines = [json.loads(x) for x in fs.cat_file(path).decode().splitlines()]
        assert [r["title_id"] for r in lines] == ["a", "b", "c"]
        assert lines[2] == records["c"]


class Boom(RuntimeError):
    pass


def _leftovers(fs, path):
    parent = path.rsplit("/", 1)[0]
    return [p for p in fs.ls(parent, detail=False) if ".tmp-" in p]


def test_atomic_write_failing_rename_keeps_old_content(url, monkeypatch):
    fs, root = storage.open_fs(url)
    path = storage.record_path(root, "x")
    storage.write_atomic(fs, path, b"old")

    def fail(*args, **kwargs):
        raise Boom("rename failed")
    monkeypatch.setattr(fs, "mv", fail)
    with pytest.raises(Boom):
        storage.write_atomic(fs, path, b"new content")
    assert fs.cat_file(path) == b"old"
    assert _leftovers(fs, path) == []


def test_atomic_write_failing_mid_write_leaves_nothing(url, monkeypatch):
    fs, root = storage.open_fs(url)
    path = storage.shard_path(root, "y")
    real_open = fs.open

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise Boom("disk full")

    monkeypatch.setattr(fs, "open", lambda p, mode="rb", **kw: HalfWriter(real_open(p, mode, **kw)))
    with pytest.raises(Boom):
        storage.write_atomic(fs, path, b"0123456789")
    monkeypatch.undo()
    assert not fs.exists(path)
    assert _leftovers(fs, path) == []
    # ... and with a previous version in place, that version survives intact.
    storage.write_atomic(fs, path, b"previous")
    monkeypatch.setattr(fs, "open", lambda p, mode="rb", **kw: HalfWriter(real_open(p, mode, **kw)))
    with pytest.raises(Boom):
        storage.write_atomic(fs, path, b"0123456789")
    monkeypatch.undo()
    assert fs.cat_file(path) == b"previous"
    assert _leftovers(fs, path) == []


def test_object_store_uses_single_put(monkeypatch):
    fs, root = storage.open_fs(f"memory://storage-put-{uuid.uuid4().hex}")
    monkeypatch.setattr(fs, "protocol", ("s3", "s3a"))
    calls = []
    monkeypatch.setattr(fs, "mv", lambda *a, **k: calls.append("mv"))
    try:
        storage.write_atomic(fs, f"{root}/a/b.json", b"{}")
        assert fs.cat_file(f"{root}/a/b.json") == b"{}" and calls == []
    finally:
        monkeypatch.undo()
        fs.rm(root, recursive=True)


def _shard_file(tmp_path, title_id="t1"):
    import pyarrow.parquet as pq
    local = tmp_path / f"local-{uuid.uuid4().hex}.parquet"
    pq.write_table(_table(title_id), local)
    return str(local)


def test_put_shard_file_streams_and_hashes(url, tmp_path, monkeypatch):
    fs, root = storage.open_fs(url)
    monkeypatch.setattr(storage, "COPY_BLOCK", 100)      # many blocks
    local = _shard_file(tmp_path)
    path, sha = storage.put_shard_file(fs, root, local)
    data = open(local, "rb").read()
    assert path == storage.shard_path(root, "t1") and fs.cat_file(path) == data
    assert sha == hashlib.sha256(data).hexdigest()
    assert storage.read_shard(fs, path).equals(_table())
    assert _leftovers(fs, path) == []


def test_file_write_failing_mid_copy_keeps_old_content(url, tmp_path, monkeypatch):
    fs, root = storage.open_fs(url)
    path = storage.shard_path(root, "z")
    storage.write_atomic(fs, path, b"previous")
    local = tmp_path / "big.bin"
    local.write_bytes(b"x" * 1000)
    monkeypatch.setattr(storage, "COPY_BLOCK", 100)
    real_open = fs.open

    class Breaks:
        def __init__(self, f):
            self.f, self.n = f, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.n += 1
            if self.n == 3:
                raise Boom("disk full")
            self.f.write(data)
    monkeypatch.setattr(fs, "open", lambda p, mode="rb", **kw: Breaks(real_open(p, mode, **kw)))
    with pytest.raises(Boom):
        storage.write_file_atomic(fs, str(local), path)
    monkeypatch.undo()
    assert fs.cat_file(path) == b"previous" and _leftovers(fs, path) == []


def test_file_write_to_object_store_is_one_put_file(tmp_path, monkeypatch):
    fs, root = storage.open_fs(f"memory://storage-putfile-{uuid.uuid4().hex}")
    monkeypatch.setattr(fs, "protocol", ("s3", "s3a"))
    calls = []
    real_put = fs.put_file
    monkeypatch.setattr(fs, "mv", lambda *a, **k: calls.append("mv"))
    monkeypatch.setattr(fs, "put_file", lambda *a, **k: (calls.append("put"), real_put(*a, **k)))
    local = tmp_path / "s.bin"
    local.write_bytes(b"abc" * 1000)
    try:
        sha = storage.write_file_atomic(fs, str(local), f"{root}/a/s.bin")
        assert calls == ["put"] and fs.cat_file(f"{root}/a/s.bin") == local.read_bytes()
        assert sha == hashlib.sha256(local.read_bytes()).hexdigest()
    finally:
        monkeypatch.undo()
        fs.rm(root, recursive=True)


def test_shard_encoding_round_trips_every_value_and_is_smaller(tmp_path):
    """``parquet_options`` (zstd, byte-stream-split floats) keeps every value and, on
    embedding-sized floats, writes fewer bytes than zstd with dictionaries everywhere."""
    import pyarrow.parquet as pq

    from training.synthetic import SyntheticSpec, make_title
    table, _, _ = make_title("enc", SyntheticSpec(dim=128, tracks_per_title=60,
                                                  faces_per_track=(3, 6)), 0, False)
    data = storage.shard_bytes(table)
    back = pq.read_table(pa.BufferReader(data))
    assert back.equals(table) and back.schema.metadata == table.schema.metadata
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    encodings = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).encodings
                 for i in range(meta.num_columns)}
    assert "BYTE_STREAM_SPLIT" in encodings["embeddings.list.element.list.element"]
    assert "BYTE_STREAM_SPLIT" in encodings["track_quality"]
    assert "BYTE_STREAM_SPLIT" not in encodings["track_id"]
    plain = pa.BufferOutputStream()
    pq.write_table(table, plain, compression="zstd")
    assert len(data) < plain.getvalue().size


@pytest.mark.parametrize("url", ["memory://lock-test/out", "LOCAL"])
def test_the_output_lock_is_exclusive_nested_released_and_names_its_holder(url, tmp_path):
    import socket
    url = str(tmp_path / "out") if url == "LOCAL" else url
    fs, root = storage.open_fs(url)
    lock = f"{root}/{storage.LOCK_FILE}"
    with pytest.raises(RuntimeError, match="inside"):
        with storage.exclusive(fs, root, "first"):
            holder = json.loads(fs.cat_file(lock))
            assert holder["command"] == "first" and holder["host"] == socket.gethostname()
            with storage.exclusive(fs, root, "nested"):          # the same process: held once
                pass
            assert fs.exists(lock)
            raise RuntimeError("inside")
    assert not fs.exists(lock)                                   # released on the error
    other = dict(command="elsewhere", host="another-machine", pid=os.getpid(), since="x")
    fs.pipe_file(lock, json.dumps(other).encode())
    with pytest.raises(storage.OutputBusy, match="elsewhere .* on another-machine"):
        with storage.exclusive(fs, root, "second"):
            pass
    assert json.loads(fs.cat_file(lock)) == other               # never taken from another host
    fs.rm(lock)
    if url.startswith("memory://"):
        fs.rm(root, recursive=True)
