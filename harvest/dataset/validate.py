"""``harvest validate URL``: check every shard and the manifest against the contract.

``validate_table`` checks one shard (its rules: :mod:`harvest.dataset.shard_rules`) and returns
human-readable violations; ``validate_output`` checks a whole output root (shards + manifest);
``validate_main`` prints the report and returns the exit code (0 valid, 1 violations).
"""
from __future__ import annotations

import json
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harvest.dataset import schema as S
from harvest.dataset import shard_rules as R
from harvest.dataset import storage

def validate_table(table: pa.Table, meta: dict | None = None,
                   min_track_frames: int | None = None) -> list[str]:
    """Violations of the shard contract by ``table`` (empty list: valid): the guards, then every
    rule of :data:`harvest.dataset.shard_rules.RULES` over one view of the shard.

    ``meta`` defaults to the table's file metadata. ``min_track_frames`` (span last-first+1 of a
    valid track) is checked when given; ``min_track_seconds``/``det_stride`` when in ``meta``.
    """
    out, dim = R.schema_rule(table)
    if dim is None:
        return out  # the columns cannot be trusted enough to check the invariants
    if meta is None:
        try:
            meta = S.read_metadata(table.schema)
        except ValueError as e:
            out.append(f"metadata: {e}")
            meta = {}
    view = R.ShardView(table, meta, dim, min_track_frames)
    out += R.metadata_rule(view)
    nulls = R.null_rule(view)
    out += nulls
    if table.num_rows == 0 or nulls:
        return out
    out += R.identity_rule(view)
    lengths = R.list_length_rule(view)
    if lengths:
        return out + lengths  # positions below assume aligned lists
    for rule in R.RULES:
        out += rule(view)
    return out


def _resolve(fs, root: str, title_id: str, path: str | None) -> str:
    """The shard a record stands for: its ``shard_path`` (a URL, an fs path, or relative to the
    root) when that lies in this output; else this output's own shard of the title. A harvest
    records where it wrote the shard, so in an output that was copied or moved since (a
    dataset published to another bucket) it names the old place, which may still exist or
    hold other bytes: what is checked is the copy in hand."""
    own = storage.shard_path(root, title_id)
    if path and "://" in path:
        same_fs = path.split("://", 1)[0] in storage.protocols(fs)
        path = fs._strip_protocol(path) if same_fs else None   # another file system: not here
    if not path:
        return own
    prefix = root.rstrip("/") + "/"
    if path.startswith(prefix):
        return path
    joined = posixpath.join(root, path)                  # relative to the root
    return joined if not path.startswith("/") and fs.exists(joined) else own


def validate_output(url: str, min_track_frames: int | None = None) -> dict[str, Any]:
    """Check every shard and the manifest under an output root.

    Returns {"url", "shards": {title_id: [violations]}, "manifest": [violations],
    "warnings": [...], "n_shards", "n_records", "ok"}.
    """
    fs, root = storage.open_fs(url)
    report: dict[str, Any] = {"url": url, "shards": {}, "manifest": [], "warnings": []}
    problems, warnings = report["manifest"], report["warnings"]
    if not fs.exists(root):
        problems.append(f"output root {url} does not exist")
    records = _checked_records(fs, root, problems)
    shards = storage.list_shards(fs, root)
    checked: set[str] = set()
    for title_id, rec in sorted(records.items()):
        if rec.get("status") != S.STATUS_DONE:
            continue
        spath = _resolve(fs, root, title_id, rec.get("shard_path"))
        if not fs.exists(spath):
            problems.append(f"record {title_id}: done but shard {spath} is missing")
            continue
        data = fs.cat_file(spath)
        if storage.sha256_bytes(data) != rec.get("shard_sha256"):
            problems.append(f"record {title_id}: shard sha256 mismatch ({spath})")
        checked.add(spath)
        report["shards"][title_id] = _validate_shard(data, title_id, rec, min_track_frames)
    for title_id, spath in sorted(shards.items()):
        if title_id not in records:
            problems.append(f"shard {title_id}: no manifest record")
        elif records[title_id].get("status") != S.STATUS_DONE:
            warnings.append(f"shard {title_id}: record status is "
                            f"{records[title_id].get('status')!r} (shard from an earlier run?)")
        if spath not in checked and title_id not in report["shards"]:
            report["shards"][title_id] = _validate_shard(fs.cat_file(spath), title_id, None,
                                                         min_track_frames)
    for d in (storage.SHARDS_DIR, storage.RECORDS_DIR):
        base = posixpath.join(root, d)
        if fs.exists(base):
            tmp = [p for p in fs.ls(base, detail=False)
                   if storage.is_temp_name(posixpath.basename(p))]
            if tmp:
                warnings.append(f"{d}/: {len(tmp)} leftover temporary file(s)")
    lock = posixpath.join(root, storage.LOCK_FILE)
    if fs.exists(lock):
        warnings.append(f"{storage.LOCK_FILE}: a command is changing this output, or one died "
                        f"holding its lock ({fs.cat_file(lock).decode(errors='replace')})")
    _check_consolidated(fs, root, records, problems, warnings)

    report["n_shards"], report["n_records"] = len(shards), len(records)
    report["ok"] = not problems and not any(report["shards"].values())
    return report


def _checked_records(fs, root: str, problems: list) -> dict[str, dict]:
    """The manifest's per-title records (title_id -> record), each checked: readable, every
    field, named after its title, a known status."""
    records: dict[str, dict] = {}
    for path in storage.list_files(fs, posixpath.join(root, storage.RECORDS_DIR),
                                   storage.RECORD_SUFFIX):
        name = posixpath.basename(path)[: -len(storage.RECORD_SUFFIX)]
        try:
            rec = json.loads(fs.cat_file(path))
        except (ValueError, OSError) as e:
            problems.append(f"record {name}: unreadable ({e})")
            continue
        lacks = [k for k in S.MANIFEST_FIELDS if k not in rec]
        if lacks:
            problems.append(f"record {name}: missing fields {lacks}")
        if rec.get("title_id") != name:
            problems.append(f"record {name}: title_id {rec.get('title_id')!r} != file name")
        if rec.get("status") not in (S.STATUS_DONE, S.STATUS_FAILED):
            problems.append(f"record {name}: status {rec.get('status')!r}")
        records[name] = rec
    return records


def _validate_shard(data: bytes, title_id: str, rec: dict | None,
                    min_track_frames: int | None) -> list[str]:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as e:  # noqa: BLE001 - any parse failure is a violation
        return [f"not a readable Parquet file: {e}"]
    try:
        meta = S.read_metadata(table.schema)
    except ValueError as e:
        return [f"metadata: {e}"]
    out = validate_table(table, meta, min_track_frames)
    if meta.get("title_id") != title_id:
        out.append(f"metadata title_id {meta.get('title_id')!r} != shard name {title_id!r}")
    if rec is not None and table.num_rows and not out:
        counts = {"tracks": table.num_rows,
                  "valid_tracks": int(pc.sum(table.column(S.IS_VALID)).as_py() or 0),
                  "faces": int(pc.sum(table.column(S.N_FACES)).as_py() or 0),
                  "cannot_link_pairs": int(pc.sum(pc.list_value_length(
                      table.column(S.CANNOT_LINK))).as_py() or 0) // 2}
        for k, v in counts.items():
            if k in rec and rec[k] != v:
                out.append(f"manifest {k}={rec[k]} but the shard has {v}")
        for k in ("config_hash", "backend", "pipeline_version"):
            if rec.get(k) is not None and k in meta and rec[k] != meta[k]:
                out.append(f"manifest {k}={rec[k]!r} but the shard has {meta[k]!r}")
    return out


def _check_consolidated(fs, root, records, problems, warnings) -> None:
    path = storage.manifest_path(root)
    if not fs.exists(path):
        if records:
            warnings.append(f"{storage.MANIFEST_FILE} is missing")
        return
    try:
        lines = [json.loads(x) for x in fs.cat_file(path).decode().splitlines() if x.strip()]
    except ValueError as e:
        problems.append(f"{storage.MANIFEST_FILE}: unreadable ({e})")
        return
    ids = [r.get("title_id") for r in lines]
    if ids != sorted(set(ids), key=str):
        problems.append(f"{storage.MANIFEST_FILE}: title_ids not unique and sorted")
    if {r.get("title_id"): r for r in lines} != records:
        warnings.append(f"{storage.MANIFEST_FILE} differs from manifest/*.json (stale?)")


def validate_main(url: str, min_track_frames: int | None = None) -> int:
    """Print a validation report of the output at ``url``; 0 if valid, 1 on any violation."""
    report = validate_output(url, min_track_frames)
    print(f"harvest validate {url}: {report['n_shards']} shard(s), "
          f"{report['n_records']} manifest record(s)")
    for title_id, violations in sorted(report["shards"].items()):
        print(f"  {'FAIL' if violations else 'ok  '} {title_id}")
        for v in violations:
            print(f"       - {v}")
    for v in report["manifest"]:
        print(f"  FAIL manifest: {v}")
    for w in report["warnings"]:
        print(f"  warn {w}")
    n_bad = sum(bool(v) for v in report["shards"].values())
    print("VALID" if report["ok"] else f"INVALID: {n_bad} shard(s) with violations, "
          f"{len(report['manifest'])} manifest violation(s)")
    return 0 if report["ok"] else 1
