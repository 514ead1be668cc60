"""Output layout and fsspec I/O of a harvest: local paths, ``file://``, ``memory://``, ``s3://``,
``gs://``.

Layout under the output root:
    shards/<title_id>.parquet    one shard per title (see ``harvest.dataset.schema``)
    manifest/<title_id>.json     one manifest record per title; status "done" makes a title done
    manifest.jsonl               consolidated manifest, one line per title sorted by title_id

Every write goes through ``write_atomic`` (bytes) or ``write_file_atomic`` (a local file, streamed
without loading it): a reader never sees a partial file at a final name.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import socket
import time
import uuid
from typing import Any, Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from harvest.dataset.schema import parquet_options, read_metadata

SHARDS_DIR = "shards"
RECORDS_DIR = "manifest"
MANIFEST_FILE = "manifest.jsonl"
SHARD_SUFFIX = ".parquet"
RECORD_SUFFIX = ".json"

TMP_MARKER = ".tmp-"    # in a name: a writer's temporary file or directory, never a final one


def temp_name(name: str) -> str:
    """A unique hidden name beside ``name`` for writing it: ``.<name>.tmp-<32 hex>``."""
    return f".{name}{TMP_MARKER}{uuid.uuid4().hex}"


def is_temp_name(name: str) -> bool:
    """Whether a base name is one that ``temp_name`` made (left behind by a killed writer)."""
    return TMP_MARKER in name


# Object stores where one PUT is atomic (the object appears whole or not at all) and rename
# is a copy + delete, so the temporary-name dance would only add a window of duplication.
_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss"}


def open_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and root path (protocol stripped, no trailing slash) of an output URL."""
    fs, root = fsspec.core.url_to_fs(url)
    return fs, (root.rstrip("/") or "/")


def protocols(fs: fsspec.AbstractFileSystem) -> tuple:
    return tuple(fs.protocol) if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local disk (paths usable by decord, onnxruntime, dlib as they are)."""
    return any(p in ("file", "local") for p in protocols(fs))


def _is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    return any(p in _OBJECT_STORES for p in protocols(fs))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """sha256 of a file read ``COPY_BLOCK`` bytes at a time (never the whole file in memory)."""
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(COPY_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes,
                 fsync: bool = True) -> None:
    """Write ``data`` at ``path``: readers see either the old content or all of ``data``.

    Local-like file systems: temporary name in the same directory, then ``fs.mv`` (a rename);
    the temporary is removed on failure. Object stores: one PUT, which is atomic. ``fsync=False``
    skips the flush to disk (many small derived files, e.g. a report's thumbnails).
    """
    if _is_object_store(fs):
        fs.pipe_file(path, data)
        return
    with _renamed_into_place(fs, path, fsync) as f:
        f.write(data)


COPY_BLOCK = 4 << 20


def write_file_atomic(fs: fsspec.AbstractFileSystem, local_path: str, path: str) -> str:
    """Copy the local file ``local_path`` to ``path`` atomically, ``COPY_BLOCK`` bytes at a time;
    return its sha256 (computed on the bytes as they stream). Local-like file systems: temporary
    name in the same directory, then a rename; object stores: one ``put_file`` upload."""
    digest = hashlib.sha256()
    with open(local_path, "rb") as src:
        blocks = iter(lambda: src.read(COPY_BLOCK), b"")
        if _is_object_store(fs):
            for block in blocks:
                digest.update(block)
            fs.put_file(local_path, path)
            return digest.hexdigest()
        with _renamed_into_place(fs, path) as dst:
            for block in blocks:
                digest.update(block)
                dst.write(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _renamed_into_place(fs: fsspec.AbstractFileSystem, path: str, fsync: bool = True):
    """The one atomic-write rule of local-like file systems: an open temporary file beside
    ``path`` that becomes ``path`` by a rename when the block ends (flushed, and fsynced unless
    ``fsync`` is False), and is removed when the block raises."""
    parent, name = posixpath.split(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, temp_name(name))
    try:
        with fs.open(tmp, "wb") as f:
            yield f
            f.flush()
            fileno = getattr(f, "fileno", None)
            if fsync and fileno is not None:
                try:
                    os.fsync(fileno())
                except (OSError, ValueError, AttributeError, NotImplementedError):
                    pass  # not a real file descriptor (in-memory file systems)
        fs.mv(tmp, path)
    except BaseException:
        try:
            if fs.exists(tmp):
                fs.rm(tmp)
        except Exception:  # pragma: no cover - best effort, the original error matters
            pass
        raise


def shard_path(root: str, title_id: str) -> str:
    return posixpath.join(root, SHARDS_DIR, f"{title_id}{SHARD_SUFFIX}")


def record_path(root: str, title_id: str) -> str:
    return posixpath.join(root, RECORDS_DIR, f"{title_id}{RECORD_SUFFIX}")


def manifest_path(root: str) -> str:
    return posixpath.join(root, MANIFEST_FILE)


def shard_bytes(table: pa.Table) -> bytes:
    """Parquet bytes of a shard (encoded as ``parquet_options`` says; the schema's file
    metadata is kept)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **parquet_options(table.schema))
    return sink.getvalue().to_pybytes()


def write_shard(fs: fsspec.AbstractFileSystem, root: str, table: pa.Table) -> tuple[str, str]:
    """Write the shard of ``table`` (its single title) atomically; return (path, sha256)."""
    titles = table.column("title_id").unique().to_pylist() if table.num_rows else []
    if len(titles) > 1:
        raise ValueError(f"a shard holds one title, got {titles}")
    title_id = read_metadata(table.schema)["title_id"]
    if titles and titles[0] != title_id:
        raise ValueError(f"title_id column {titles[0]!r} != metadata title_id {title_id!r}")
    data = shard_bytes(table)
    path = shard_path(root, title_id)
    write_atomic(fs, path, data)
    return path, sha256_bytes(data)


def put_shard_file(fs: fsspec.AbstractFileSystem, root: str, local_path: str) -> tuple[str, str]:
    """Upload a shard written to a local file (its single title named in its metadata)
    atomically, without reading it into memory; return (path, sha256)."""
    title_id = read_metadata(pq.read_schema(local_path))["title_id"]
    path = shard_path(root, title_id)
    return path, write_file_atomic(fs, local_path, path)


def read_shard(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def write_record(fs: fsspec.AbstractFileSystem, root: str, record: dict[str, Any]) -> str:
    path = record_path(root, record["title_id"])
    write_atomic(fs, path, (json.dumps(record, sort_keys=True) + "\n").encode())
    return path


def read_records(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict[str, Any]]:
    """Every per-title manifest record under ``root``, keyed by title_id."""
    records: dict[str, dict[str, Any]] = {}
    for path in list_files(fs, posixpath.join(root, RECORDS_DIR), RECORD_SUFFIX):
        record = json.loads(fs.cat_file(path))
        records[record["title_id"]] = record
    return records


def list_files(fs: fsspec.AbstractFileSystem, directory: str, suffix: str) -> list[str]:
    """Sorted paths of the visible files ending in ``suffix`` directly under ``directory``."""
    if not fs.exists(directory):
        return []
    out = []
    for p in fs.ls(directory, detail=False):
        name = posixpath.basename(p.rstrip("/"))
        if name.endswith(suffix) and not name.startswith("."):
            out.append(p)
    return sorted(out)


def list_shards(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, str]:
    """title_id -> shard path of every shard file under ``root``."""
    return {posixpath.basename(p)[: -len(SHARD_SUFFIX)]: p
            for p in list_files(fs, posixpath.join(root, SHARDS_DIR), SHARD_SUFFIX)}


def write_manifest(fs: fsspec.AbstractFileSystem, root: str,
                   records: dict[str, dict[str, Any]] | Iterable[dict[str, Any]]) -> str:
    """Rewrite the consolidated ``manifest.jsonl`` (one line per title, sorted by title_id)."""
    rows = records.values() if isinstance(records, dict) else records
    lines = [json.dumps(r, sort_keys=True) for r in sorted(rows, key=lambda r: r["title_id"])]
    path = manifest_path(root)
    write_atomic(fs, path, "".join(line + "\n" for line in lines).encode())
    return path


LOCK_FILE = ".lock"     # at an output's root while a command changes what is already written


class OutputBusy(ValueError):
    """Another command is changing this output (its ``LOCK_FILE`` exists)."""


@contextlib.contextmanager
def exclusive(fs: fsspec.AbstractFileSystem, root: str, command: str):
    """Hold ``root``'s lock while the block runs: commands that rewrite what an output already
    holds (a takedown, the people store's builds and corrections) read, change and write back
    whole files, so two at once would lose one's changes. The lock is a file created with
    exclusive-create (``xb``: O_EXCL on a local or network file system, a conditional PUT on S3
    and the in-memory file system) naming the holder; a second command fails at once with
    ``OutputBusy``, saying who holds it. A lock whose holder was a process of this machine that
    no longer runs (a crash) is taken over; any other is removed by hand. Nested in the same
    process (``people remove`` on a store inside the harvest it rewrites), it is held once."""
    path = posixpath.join(root, LOCK_FILE)
    me = dict(command=command, host=socket.gethostname(), pid=os.getpid(),
              since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    holder = _lock_holder(fs, path)
    if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
        yield                                  # this process holds it already (nested)
        return
    fs.makedirs(root, exist_ok=True)
    for attempt in (0, 1):
        try:
            _create(fs, path, json.dumps(me, sort_keys=True).encode())
            break
        except FileExistsError:
            holder = _lock_holder(fs, path)
            if attempt == 0 and _gone(holder):
                fs.rm(path)
                continue
            who = (f"{holder.get('command', '?')} (pid {holder.get('pid', '?')} on "
                   f"{holder.get('host', '?')}, since {holder.get('since', '?')})")
            raise OutputBusy(f"{root} is being changed by {who}: wait for it to end, or, if it "
                             f"is gone, delete {path}") from None
    try:
        yield
    finally:
        if _lock_holder(fs, path) == me:
            fs.rm(path)


def _create(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``path`` only if it does not exist (FileExistsError otherwise); where the file
    system has no exclusive create, a check then a write (a narrow window, not none)."""
    try:
        f = fs.open(path, "xb")
    except (NotImplementedError, ValueError):
        if fs.exists(path):
            raise FileExistsError(path) from None
        f = fs.open(path, "wb")
    with f:
        f.write(data)


def _lock_holder(fs: fsspec.AbstractFileSystem, path: str) -> dict:
    try:
        return json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return {}


def _gone(holder: dict) -> bool:
    """Whether a lock's holder was a process of this machine that has ended."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
