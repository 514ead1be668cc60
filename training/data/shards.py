"""Shards as training reads them: listing and footers (:func:`shard_info`), one title's columns
(:func:`read_title`, :class:`Columns` for the lazily read ones), titles streamed one ahead
(:func:`iter_titles`), and which titles train and validate where (:func:`split_titles`,
:func:`deal_titles`, :func:`resolve_titles`). The driver only ever reads footers.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harvest.dataset.schema import embedding_dim, read_metadata
from harvest.dataset.storage import is_local, open_fs
from training.columns import TRACK_ID, TRAIN_COLUMNS


def list_shards(url: str) -> list[str]:
    """Parquet files under ``url`` (a file or a directory, searched recursively), as URLs."""
    fs, path = open_fs(url)
    if fs.isfile(path):
        files = [path]
    else:
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"no .parquet shards under {url}")
    return [p if is_local(fs) else fs.unstrip_protocol(p) for p in files]


def shard_info(url: str) -> list[dict]:
    """One dict per shard from its footer only: ``path``, ``title_id``, ``source_uri``, ``dim``,
    ``tracks`` (row count)."""
    out = []
    for path in list_shards(url):
        fs, p = open_fs(path)
        with fs.open(p, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        schema = meta.schema.to_arrow_schema()
        harvest = read_metadata(schema)
        out.append(dict(path=path, title_id=harvest["title_id"], source_uri=harvest["source_uri"],
                        dim=embedding_dim(schema), tracks=meta.num_rows))
    return out


def read_title(path: str, columns=TRAIN_COLUMNS) -> pa.Table:
    """One shard (= one title group) with ``columns``, tracks in ``track_id`` order.

    ``ParquetFile`` on one thread, in batches of rows (:func:`_read`; the dataset layer of
    ``pq.read_table`` costs about as much again on a 1,400-track shard, and a worker's cores
    belong to its model); a local path is memory-mapped. Shards the harvest wrote are already
    in track order: no sort then.
    ``columns`` may be :class:`Columns`: their lazy columns are read only where needed."""
    fs, p = open_fs(path)
    if is_local(fs):
        table = _read_columns(pq.ParquetFile(p, memory_map=True), columns)
    else:
        with fs.open(p, "rb") as f:
            table = _read_columns(pq.ParquetFile(f), columns)
    if TRACK_ID in table.column_names:
        ids = table[TRACK_ID].to_numpy()
        if len(ids) > 1 and not (ids[1:] >= ids[:-1]).all():
            table = table.sort_by([(TRACK_ID, "ascending")])
    return table


class Columns(tuple):
    """The shard columns a kind reads, plus ``lazy``: (column, needed(table) -> bool) pairs;
    :func:`read_title` reads a lazy column (from the same open file, a second read) only when
    ``needed`` says the rows of the first read use it."""

    def __new__(cls, columns, lazy=()):
        self = super().__new__(cls, columns)
        self.lazy = tuple(lazy)
        return self


READ_BATCH_ROWS = 256   # rows decoded at a time (whole column chunks: 5-18 % slower, measured)


def _read(pf: pq.ParquetFile, columns: list[str]) -> pa.Table:
    """``columns`` of one Parquet file on one thread, decoded :data:`READ_BATCH_ROWS` rows at
    a time. Decoding a nested float column (``tracklets``) is mostly its definition and
    repetition levels, as large as the floats: decoded a whole column chunk at once, the
    level and value buffers of a 1,400-track title (D = 512, about 25 MB) outgrow the CPU
    caches. The data path of one worker on one CPU, whole chunks against batches, interleaved
    in one process: ImpTriplet 58,000 / 61,000, MvCorr 76,000 / 90,000, BCL 79,000 / 87,000
    samples/s (docs/benchmarks.md)."""
    batches = list(pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns,
                                   use_threads=False))
    if not batches:
        return pf.read(columns=columns, use_threads=False)
    return pa.Table.from_batches(batches)


def _read_columns(pf: pq.ParquetFile, columns) -> pa.Table:
    """``columns`` of one Parquet file, then the lazy ones needed (:class:`Columns`)."""
    table = _read(pf, list(columns))
    for name, needed in getattr(columns, "lazy", ()):
        if name not in table.column_names and needed(table):
            table = table.append_column(name, _read(pf, [name])[name])
    return table


READ_AHEAD = 1           # shards read ahead of the one being consumed (2: no gain measured)


def iter_titles(paths: Iterable[str], columns=TRAIN_COLUMNS, ahead: int | None = None
                ) -> Iterator[pa.Table]:
    """:func:`read_title` of each path in order, the next ``ahead`` (default
    :data:`READ_AHEAD`) read meanwhile, each in its own thread (Parquet decoding releases the
    GIL)."""
    paths = list(paths)
    if not paths:
        return
    ahead = max(int(READ_AHEAD if ahead is None else ahead), 1)
    with ThreadPoolExecutor(ahead) as pool:
        pending = [pool.submit(read_title, p, columns) for p in paths[:ahead]]
        for k in range(len(paths)):
            table = pending.pop(0).result()
            if k + ahead < len(paths):
                pending.append(pool.submit(read_title, paths[k + ahead], columns))
            yield table


def title_hash(title_id: str) -> float:
    """Deterministic number in [0, 1) from the title id."""
    return int(hashlib.sha1(title_id.encode()).hexdigest()[:12], 16) / 16 ** 12


def split_titles(titles, val_titles=None, val_fraction: float = 0.2) -> tuple[list, list]:
    """-> (train titles, validation titles); a title is never in both.

    ``val_titles`` explicit (each must exist), else titles whose hash < ``val_fraction``; with
    two or more titles both sides are non-empty (the lowest / highest hash moves over).
    """
    titles = sorted(set(titles))
    if val_titles:
        missing = sorted(set(val_titles) - set(titles))
        if missing:
            raise ValueError(f"validation titles not in the shards: {missing}")
        val = sorted(set(val_titles))
    else:
        ranked = sorted(titles, key=title_hash)
        val = [t for t in ranked if title_hash(t) < val_fraction]
        if len(titles) >= 2 and not val:
            val = ranked[:1]
        if len(titles) >= 2 and len(val) == len(titles):
            val = val[:-1]
    train = [t for t in titles if t not in set(val)]
    return train, val


def deal_titles(infos: list[dict], world: int, rng: np.random.Generator | None = None) -> list[list]:
    """Shards (``shard_info`` dicts) -> ``world`` lists with about equal track counts.

    Titles are taken in random order (``rng``; sorted by title_id without one) and each goes to
    the rank with the fewest tracks so far, so every rank gets a similar number of steps."""
    order = sorted(infos, key=lambda i: i["title_id"])
    if rng is not None:
        order = [order[i] for i in rng.permutation(len(order))]
    out, load = [[] for _ in range(world)], np.zeros(world)
    for info in order:
        r = int(np.argmin(load))
        out[r].append(info)
        load[r] += info["tracks"]
    return out


# ------------------------------------------------------------------------------- names
def source_name(info: dict) -> str:
    """The file name of a shard's source video (``title_1.mp4``)."""
    return info["source_uri"].rstrip("/").split("/")[-1]


def resolve_titles(infos: list[dict], names) -> list[dict]:
    """Shard infos of ``names`` in order; a name is a title_id, its source file name or that
    name without its extension (the one rule every command uses). Unknown or ambiguous names
    raise ``ValueError``."""
    out = []
    for name in names or ():
        hits = [i for i in infos if name == i["title_id"]] or \
               [i for i in infos if name in (source_name(i), source_name(i).rsplit(".", 1)[0])]
        if not hits:
            raise ValueError(f"title {name!r} is in no shard (title_id or source file name)")
        if len(hits) > 1:
            raise ValueError(f"title {name!r} names {len(hits)} shards: "
                             f"{sorted(h['title_id'] for h in hits)}; use the title_id")
        out.append(hits[0])
    return out
