"""The people store: everything ``people`` writes under ``--output URL``, and its one reader.

    store.json                 the state's header (versioned): format version, the build config
                               (method, head and its sha256, link parameters), the model pack
                               (backend, detector/embedder sha256: photos must match it), the
                               calibrated cut ``tau``, ``next_person_id`` (ids are never reused),
                               and per title its shard sha256, source and config hash
    corrections.jsonl          the corrections, one JSON object a line, in the order given:
                               {"op": "name", "person": 3, "name": "Ada"}
                               {"op": "merge", "into": 3, "person": 7}
                               {"op": "split", "person": 3, "to": 12, "tracks": [["t", 5], ...]}
                               {"op": "mark", "as": "not_face"|"unknown", "tracks": [...]}
                               {"op": "remove", "person": 3, "tracks": 41, "request_id": "..."}
    people.parquet             person_id, name, n_tracks, n_titles, titles, screen_seconds
    assignments/<title>.parquet  title_id, track_id, person_id (null: marked not a face or
                               unknown), status (linked | corrected | not_face | unknown),
                               confidence (the title-level calibrated one), similarity (of the
                               track's title cluster to its person when linked)
    state/units.parquet        title clusters ("units"): title_id, unit, person_id as linked,
                               similarity, n_tracks, sum (sum of the tracks' unit embeddings)
    state/titles/<title>.parquet  per valid track: track_id, unit, confidence, n_faces, start_s,
                               end_s, cannot_link, embedding (the space people are linked in)

Every file is written atomically (``harvest.dataset.storage.write_atomic``) and only when its bytes
change, so a build with nothing new leaves every byte as it was. ``store.json`` is written last.
"""
from __future__ import annotations

import io
import json
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harvest.dataset.storage import list_files, open_fs, write_atomic

FORMAT = 1
STORE_FILE, CORRECTIONS_FILE, PEOPLE_FILE = "store.json", "corrections.jsonl", "people.parquet"
ASSIGN_DIR, UNITS_FILE, TITLES_DIR = "assignments", "state/units.parquet", "state/titles"
STATUSES = ("linked", "corrected", "not_face", "unknown")
MARKS = ("not_face", "unknown")

ASSIGN_SCHEMA = pa.schema([
    pa.field("title_id", pa.string(), nullable=False),
    pa.field("track_id", pa.int64(), nullable=False),
    pa.field("person_id", pa.int64()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("confidence", pa.float32(), nullable=False),
    pa.field("similarity", pa.float32(), nullable=False)])
PEOPLE_SCHEMA = pa.schema([
    pa.field("person_id", pa.int64(), nullable=False),
    pa.field("name", pa.string()),
    pa.field("n_tracks", pa.int64(), nullable=False),
    pa.field("n_titles", pa.int64(), nullable=False),
    pa.field("titles", pa.list_(pa.string()), nullable=False),
    pa.field("screen_seconds", pa.float64(), nullable=False)])


def units_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("title_id", pa.string(), nullable=False),
        pa.field("unit", pa.int32(), nullable=False),
        pa.field("person_id", pa.int64(), nullable=False),
        pa.field("similarity", pa.float32(), nullable=False),
        pa.field("n_tracks", pa.int64(), nullable=False),
        pa.field("sum", pa.list_(pa.float32(), dim), nullable=False)])


def title_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("track_id", pa.int64(), nullable=False),
        pa.field("unit", pa.int32(), nullable=False),
        pa.field("confidence", pa.float32(), nullable=False),
        pa.field("n_faces", pa.int64(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("cannot_link", pa.list_(pa.int64()), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False)])


class StoreError(ValueError):
    """A people store that cannot be used as asked (one line for the user)."""


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def vectors(col, dim: int) -> np.ndarray:
    """A fixed-size-list column -> (n, dim) float32."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros((0, dim), np.float32)
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), dim).astype(np.float32)


class Store:
    """One people store (a local path or fsspec URL)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.root = open_fs(self.url)

    # ---------------------------------------------------------------- files
    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def exists(self) -> bool:
        return self.fs.exists(self.path(STORE_FILE))

    def read_bytes(self, rel: str) -> bytes | None:
        p = self.path(rel)
        return self.fs.cat_file(p) if self.fs.exists(p) else None

    def write(self, rel: str, data: bytes) -> bool:
        """Write ``rel`` atomically unless it already holds ``data``; -> whether it changed."""
        if self.read_bytes(rel) == data:
            return False
        write_atomic(self.fs, self.path(rel), data)
        return True

    def write_table(self, rel: str, table: pa.Table) -> bool:
        return self.write(rel, parquet_bytes(table))

    def read_table(self, rel: str, columns=None) -> pa.Table | None:
        p = self.path(rel)
        if not self.fs.exists(p):
            return None
        with self.fs.open(p, "rb") as f:
            return pq.read_table(f, columns=columns)

    def remove(self, rel: str) -> None:
        if self.fs.exists(self.path(rel)):
            self.fs.rm(self.path(rel))

    # ---------------------------------------------------------------- the header
    def header(self) -> dict:
        data = self.read_bytes(STORE_FILE)
        if data is None:
            raise StoreError(f"{self.url}: no people store here (run `people build` first)")
        head = json.loads(data)
        if head.get("format") != FORMAT:
            raise StoreError(f"{self.url}: people store format {head.get('format')!r}; this "
                             f"version reads format {FORMAT}")
        return head

    def write_header(self, head: dict) -> bool:
        return self.write(STORE_FILE, (json.dumps(head, indent=1, sort_keys=True) + "\n").encode())

    # ---------------------------------------------------------------- corrections
    def corrections(self) -> list[dict]:
        data = self.read_bytes(CORRECTIONS_FILE) or b""
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]

    def add_correction(self, entry: dict) -> None:
        data = (self.read_bytes(CORRECTIONS_FILE) or b"") + \
            (json.dumps(entry, sort_keys=True) + "\n").encode()
        write_atomic(self.fs, self.path(CORRECTIONS_FILE), data)

    # ---------------------------------------------------------------- per title state
    def title_rel(self, title_id: str) -> str:
        return f"{TITLES_DIR}/{title_id}.parquet"

    def assign_rel(self, title_id: str) -> str:
        return f"{ASSIGN_DIR}/{title_id}.parquet"

    def titles_on_disk(self) -> list[str]:
        return [posixpath.basename(p)[:-len(".parquet")]
                for p in list_files(self.fs, self.path(TITLES_DIR), ".parquet")]

    def title_state(self, title_id: str, columns=None) -> pa.Table:
        t = self.read_table(self.title_rel(title_id), columns)
        if t is None:
            raise StoreError(f"{self.url}: the state of title {title_id!r} is missing")
        return t

    def units(self) -> pa.Table | None:
        return self.read_table(UNITS_FILE)


def parse_track(text: str) -> tuple[str, int]:
    """``TITLE:TRACK`` -> (title, track id); the title part may itself hold ':'."""
    title, sep, track = text.rpartition(":")
    if not sep or not title or not track.lstrip("-").isdigit():
        raise StoreError(f"track {text!r}: expected TITLE:TRACK_ID, e.g. title_1:4")
    return title, int(track)
