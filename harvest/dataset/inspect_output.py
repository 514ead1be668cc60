"""``harvest inspect URL``: the manifest as a table, per-shard statistics and totals.

Both tables count: ``tracks`` and ``valid`` (valid tracks) are numbers of tracks in each.
"""
from __future__ import annotations

import posixpath

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harvest.dataset import schema as S
from harvest.dataset import storage
from harvest.tables import RULE, text_table

STAT_COLUMNS = [S.N_FACES, S.IS_VALID, S.CANNOT_LINK, S.HARD_NEGATIVE, S.TRACKLETS,
                S.MEAN_EMBEDDING]


def _table(header: list[str], rows: list[list]) -> str:
    return text_table([header, RULE, *rows], strip=True)


def shard_stats(fs, path: str) -> dict:
    """Statistics of one shard, reading only the columns they need."""
    size = fs.size(path)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=STAT_COLUMNS)
    n = table.num_rows
    faces = table.column(S.N_FACES).to_numpy()
    degree = pc.list_value_length(table.column(S.CANNOT_LINK)).to_numpy(zero_copy_only=False)
    return {
        "tracks": n,
        "valid": int(np.sum(table.column(S.IS_VALID).to_numpy(zero_copy_only=False))),
        "faces/track mean": f"{faces.mean():.1f}" if n else "-",
        "faces/track median": f"{np.median(faces):g}" if n else "-",
        "D": table.schema.field(S.MEAN_EMBEDDING).type.list_size,
        "cl degree mean": f"{degree.mean():.2f}" if n else "-",
        "hard negatives": n - table.column(S.HARD_NEGATIVE).null_count,
        "tracklets": n - table.column(S.TRACKLETS).null_count,
        "size": human_size(size),
        "_size": size, "_faces": int(faces.sum()),
    }


def human_size(size: float) -> str:
    """1536 -> '1.5 KiB' (B, KiB, MiB, GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def inspect_main(url: str) -> int:
    """Print the manifest, per-shard statistics and totals of the output at ``url``."""
    fs, root = storage.open_fs(url)
    if not fs.exists(root):
        print(f"harvest inspect: {url} does not exist")
        return 1
    records = storage.read_records(fs, root)
    rows, totals = [], dict.fromkeys(S.COUNT_FIELDS + ("seconds",), 0)
    for tid, r in sorted(records.items()):
        err = (r.get("error") or "").replace("\n", " ")
        rows.append([tid, posixpath.basename(str(r.get("source") or "")), r.get("status")]
                    + [r.get(k) for k in S.COUNT_FIELDS]
                    + [f"{r['seconds']:.1f}" if r.get("seconds") is not None else None,
                       err[:60] + ("..." if len(err) > 60 else "")])
        for k in totals:
            totals[k] += r.get(k) or 0
    print(f"Manifest of {url}: {len(records)} title(s)")
    if rows:
        status = [r.get("status") for r in records.values()]
        rows.append(["TOTAL", "", (f"{status.count(S.STATUS_DONE)} done / "
                                   f"{status.count(S.STATUS_FAILED)} failed")]
                    + [totals[k] for k in S.COUNT_FIELDS] + [f"{totals['seconds']:.1f}", ""])
        print(_table(["title_id", "source", "status", "frames", "faces", "tracks", "valid",
                      "cl pairs", "seconds", "error"], rows))

    shards = storage.list_shards(fs, root)
    print(f"\nShards: {len(shards)}")
    stats, srows, errors = {}, [], []
    for tid, path in sorted(shards.items()):
        try:
            stats[tid] = s = shard_stats(fs, path)
        except Exception as e:  # noqa: BLE001 - inspect reports, validate judges
            srows.append([tid, "unreadable"])
            errors.append(f"  {tid}: {e}"[:160])
            continue
        srows.append([tid] + [v for k, v in s.items() if not k.startswith("_")])
    if srows:
        keys = ["tracks", "valid", "faces/track mean", "faces/track median", "D",
                "cl degree mean", "hard negatives", "tracklets", "size"]
        if stats:
            n_tracks = sum(s["tracks"] for s in stats.values())
            n_faces = sum(s["_faces"] for s in stats.values())
            srows.append(["TOTAL", n_tracks, sum(s["valid"] for s in stats.values()),
                          f"{n_faces / max(n_tracks, 1):.1f}", "", "", "",
                          sum(s["hard negatives"] for s in stats.values()),
                          sum(s["tracklets"] for s in stats.values()),
                          human_size(sum(s["_size"] for s in stats.values()))])
        print(_table(["title_id"] + keys, srows))
    for line in errors:
        print(line)
    return 0
