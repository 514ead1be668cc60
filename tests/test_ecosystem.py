"""The shards of a real harvest open with the usual tools: pyarrow.dataset, pandas, DuckDB and
Hugging Face ``datasets`` (offline), and each tool's counts equal the manifest's.
Shares the session's harvest with tests/test_card.py."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest
from test_card import harvest_output, manifest

from harvest import cli
from harvest.dataset import schema as S


@pytest.fixture(scope="module")
def out(tmp_path_factory, ray_cluster):
    return harvest_output(tmp_path_factory)


def done_records(out: str) -> dict[str, dict]:
    return {t: r for t, r in manifest(out).items() if r["status"] == "done"}


def test_pyarrow_dataset(out):
    records = done_records(out)
    ds = pads.dataset(os.path.join(out, "shards"), format="parquet")
    assert ds.count_rows() == sum(r["tracks"] for r in records.values())
    assert ds.schema.names == S.shard_schema(8).names
    per_title = ds.to_table(columns=["title_id", "n_faces", "is_valid"]).group_by("title_id").aggregate(
        [("n_faces", "sum"), ("is_valid", "sum"), ("title_id", "count")]).to_pylist()
    assert {r["title_id"]: (r["title_id_count"], r["n_faces_sum"], r["is_valid_sum"])
            for r in per_title} == {t: (r["tracks"], r["faces"], r["valid_tracks"])
                                    for t, r in records.items()}


def test_pandas(out):
    import pandas as pd
    records = done_records(out)
    df = pd.read_parquet(os.path.join(out, "shards"))
    assert len(df) == sum(r["tracks"] for r in records.values())
    assert list(df.columns) == S.shard_schema(8).names
    valid = df.groupby("title_id")["is_valid"].sum().to_dict()
    assert valid == {t: r["valid_tracks"] for t, r in records.items()}
    emb = np.stack(df["mean_embedding"].to_list())
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_duckdb_counts_cannot_link_pairs_per_title(out):
    duckdb = pytest.importorskip("duckdb")
    records = done_records(out)
    shards = os.path.join(out, "shards", "*.parquet")
    rows = duckdb.sql(f"""
        SELECT title_id, sum(len(cannot_link)) / 2 AS cannot_link_pairs, count(*) AS tracks,
               sum(n_faces) AS faces
        FROM read_parquet('{shards}') GROUP BY title_id ORDER BY title_id""").fetchall()
    assert {t: (pairs, n, faces) for t, pairs, n, faces in rows} == {
        t: (r["cannot_link_pairs"], r["tracks"], r["faces"]) for t, r in records.items()}
    assert sum(r[1] for r in rows) > 0
    failed = duckdb.sql(f"""SELECT title_id FROM read_json_auto('{os.path.join(out, "manifest.jsonl")}')
                            WHERE status = 'failed'""").fetchall()
    assert [t for (t,) in failed] == [t for t, r in manifest(out).items() if r["status"] == "failed"]


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)   # read at import time
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    return datasets, str(tmp_path / "cache")


def test_hf_datasets_parquet_loader(out, hf_offline):
    datasets, cache = hf_offline
    records = done_records(out)
    ds = datasets.load_dataset("parquet", data_files=os.path.join(out, "shards", "*.parquet"),
                               split="train", cache_dir=cache)
    assert ds.num_rows == sum(r["tracks"] for r in records.values())
    assert ds.column_names == S.shard_schema(8).names
    table = pads.dataset(os.path.join(out, "shards"), format="parquet").to_table()
    first = table.filter(pc.equal(table["title_id"], ds[0]["title_id"])).to_pylist()[0]
    assert ds[0]["track_id"] == first["track_id"]
    np.testing.assert_array_equal(np.float32(ds[0]["mean_embedding"]),
                                  np.float32(first["mean_embedding"]))


def test_hf_datasets_loads_the_output_root_through_the_card(out, hf_offline, tmp_path):
    """``load_dataset(OUTPUT)`` follows the card's ``configs:`` to the shards (without it, the
    manifest's JSON files would be read as the data)."""
    datasets, cache = hf_offline
    assert cli.main(["card", out]) == 0
    ds = datasets.load_dataset(out, split="train", cache_dir=cache)
    assert ds.num_rows == sum(r["tracks"] for r in done_records(out).values())
    assert ds.column_names == S.shard_schema(8).names
