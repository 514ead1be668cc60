"""Reading a harvest's shards as one table, with their types kept.

``pd.read_parquet`` turns a nullable integer column into float64 with NaN (``hard_negative``: a
track id, or none), and list columns into object arrays. ``read_pandas`` keeps every Arrow type
(``pd.ArrowDtype``): ``hard_negative`` stays int64 with ``<NA>`` for "no hard negative".

    from harvest.dataset.dataset_io import read_pandas
    df = read_pandas("/data/harvest/v1", columns=["title_id", "track_id", "hard_negative"])
"""
from __future__ import annotations

import posixpath

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads

from harvest.dataset import storage


def shard_paths(url: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """The shards named by ``url``: a harvest output root, its ``shards/`` directory, or one
    shard file."""
    fs, path = storage.open_fs(url)
    if fs.isfile(path):
        return fs, [path]
    if fs.isdir(posixpath.join(path, storage.SHARDS_DIR)):
        return fs, sorted(storage.list_shards(fs, path).values())
    paths = sorted(p for p in fs.find(path) if p.endswith(storage.SHARD_SUFFIX))
    if not paths:
        raise FileNotFoundError(f"no shard ({storage.SHARD_SUFFIX}) under {url}")
    return fs, paths


def read_table(url: str, columns: list[str] | None = None) -> pa.Table:
    """Every shard under ``url`` (see ``shard_paths``) as one Arrow table."""
    fs, paths = shard_paths(url)
    return pads.dataset(paths, filesystem=fs, format="parquet").to_table(columns=columns)


def read_pandas(url: str, columns: list[str] | None = None):
    """Every shard under ``url`` as a pandas DataFrame with Arrow-backed dtypes
    (``pd.ArrowDtype``): nullable integers stay integers (``<NA>``, not NaN), lists stay lists."""
    import pandas as pd
    return read_table(url, columns).to_pandas(types_mapper=pd.ArrowDtype)
