"""Benchmark: one title's shard encoded two ways, in one process: how the harvest wrote shards
before pipeline 1.4.0 (zstd, dictionary pages for every column, vector values declared
nullable) and now (``harvest.dataset.schema.parquet_options``: zstd, BYTE_STREAM_SPLIT floats,
no float dictionary, non-null vector values). Prints file size, write time and read time of
what training reads (``ParquetFile.read`` on one thread, as ``training.data.read_title``), of
the ``embeddings`` column and of the whole file.

    python bench/shard_encoding.py [--tracks 1400] [--dim 512] [--repeat 15] [--shard PATH]

``--shard`` re-encodes a harvested shard instead of a synthetic title (real embeddings and
crops). Median of ``--repeat`` reads, the two encodings interleaved. Prints figures; asserts
nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)        # the repository's harvest package, not bench/harvest.py
from harvest.dataset import schema as S  # noqa: E402
from training import registry  # noqa: E402


def _older(table: pa.Table) -> pa.Table:
    """``table`` with the types before 1.4.0 (vector values nullable)."""
    schema = pa.schema([pa.field(f.name, S.loose_type(f.type), f.nullable) for f in table.schema],
                       metadata=table.schema.metadata)
    return table.cast(schema)


def _current(table: pa.Table) -> pa.Table:
    """``table`` (a shard of any version) with today's types (``shard_schema``)."""
    schema = S.shard_schema(S.embedding_dim(table.schema))
    return table.cast(pa.schema(list(schema), metadata=table.schema.metadata))


def _timed(fn, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return float(np.median(out)) * 1e3


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tracks", type=int, default=1400)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--shard", help="re-encode this harvested shard instead of a synthetic title")
    args = ap.parse_args(argv)
    if args.shard:
        table = pq.read_table(args.shard)
        what = f"{args.shard}: {table.num_rows} tracks"
    else:
        from training.synthetic import SyntheticSpec, make_title
        table, _, _ = make_title("bench", SyntheticSpec(dim=args.dim, tracks_per_title=args.tracks,
                                                        faces_per_track=(3, 3)), 0, False)
        what = f"synthetic title: {args.tracks} tracks, 3 faces each, D = {args.dim}"
    columns = [c for c in registry.get("imptriplet").samples.columns if c in table.column_names]
    ways = {"before 1.4.0 (zstd, dictionaries, nullable values)":
            (_older(table), dict(compression="zstd")),
            "now (parquet_options, non-null values)": (_current(table),
                                                       S.parquet_options(table.schema))}
    print(what)
    with tempfile.TemporaryDirectory() as tmp:
        rows, files = [], {}
        for k, (name, (t, opts)) in enumerate(ways.items()):
            path = os.path.join(tmp, f"{k}.parquet")
            files[name] = path
            write = _timed(lambda: pq.write_table(t, path, **opts), 3)
            rows.append([name, os.path.getsize(path) / 2 ** 20, write])
        for _ in range(2):                  # interleaved, so drift hits both alike
            for row, path in zip(rows, files.values()):
                reads = [_timed(lambda c=c: pq.ParquetFile(path).read(columns=c, use_threads=False),
                                args.repeat) for c in (columns, ["embeddings"], None)]
                row[3:] = [min(a, b) for a, b in zip(row[3:], reads)] if len(row) > 3 else reads
        print("\n| encoding | MiB | write ms | read training columns ms | read embeddings ms "
              "| read all ms |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.0f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} |")
        (b, n) = rows
        print(f"\nnow / before: size {n[1] / b[1]:.2f}, write {b[2] / n[2]:.1f}x faster, "
              f"training read {b[3] / n[3]:.2f}x faster, embeddings {b[4] / n[4]:.2f}x, "
              f"all {b[5] / n[5]:.2f}x")


if __name__ == "__main__":
    main()
