"""Takedown: remove tracks (a person's faces) from a harvest output, keeping it valid.

``remove_tracks(OUT, {title_id: track ids}, reason)`` writes, for each affected title, a new
shard version without those rows, in which the remaining tracks stay consistent: removed ids
leave every ``cannot_link`` list, and every ``hard_negative`` is re-chosen by the harvest's own
rule (``harvest.miners.hard_negative.nearest_cannot_linked``: the cannot-linked track whose
mean embedding is nearest the anchor tracklet, the track mean when it has no tracklets), null
where no cannot-link remains. Tracklets, their members and crops refer to the track's own faces
only and need nothing. Remaining track ids are not renumbered (stores such as ``people`` refer to
them), so a shard's ids may have gaps; its ``harvest`` metadata counts the tracks taken out so
far (``removed_tracks``); the schema and every other key stay as they were. Shards are rewritten
a row group at a time (memory: one row group plus the (T, D) means and anchors).

Then the title's manifest record (``shard_sha256``, the counts ``harvest validate`` checks, and
``shard_path``: the shard of this output that was rewritten; a record still naming a copy
elsewhere, from before the output was moved, would otherwise keep pointing at the old faces),
the consolidated manifest, the dataset card when the output has one (``OUT/README.md``, rebuilt
with its licence, name and contact), and last one line of the append-only audit log
``OUT/takedown/audit.jsonl``: request id, reason, time, per title the removed track ids, faces
removed and the shard's sha256 before and after; never embeddings or images.

Crash safety. Before any shard changes, the request's plan (per title: the ids, faces and sha256
before) is written to ``OUT/takedown/pending/<request>.json``; every file is written atomically;
the order is shards, records, manifest, card, audit line, then the plan is deleted. A crash
part-way leaves some shards new and their records old (``harvest validate`` reports the sha256
mismatch) and no audit line. Running the same request again (same ``request_id``; without one,
the id is derived from the tracks and the reason, so the same call is the same request) finishes
it: ids already gone are a no-op, every affected record, the manifest and the card are rewritten
from the shards, and the audit line reports what the interrupted run removed (from the plan, with
``"resumed": true``). Re-running a finished request changes no shard and logs a line with no ids.
One takedown at a time per output: it holds the output's lock (``OUT/.lock``,
``harvest.dataset.storage.exclusive``) and a second one fails at once, naming the first. Not
while ``harvest run`` writes to the output (the run takes no lock: a driver resumed on another
machine could not take over its predecessor's).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import posixpath
import re
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harvest.dataset import schema as S
from harvest.dataset import storage
from harvest.miners.hard_negative import nearest_cannot_linked

TAKEDOWN_DIR = "takedown"
AUDIT_FILE = f"{TAKEDOWN_DIR}/audit.jsonl"
PENDING_DIR = f"{TAKEDOWN_DIR}/pending"


def _rows(arr, dim: int) -> np.ndarray:
    """(n, dim) float32 of a fixed_size_list<float32, dim> array without nulls."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), dim).astype(np.float32)


def hard_negatives(track_ids, means: np.ndarray, anchors: np.ndarray, links: list) -> list:
    """The harvest's hard-negative rule on stored columns: per track (``track_ids``, its unit
    mean and anchor tracklet), the track id in ``links`` (its cannot-linked track ids) whose
    mean is nearest the anchor, first on ties; None where it has none."""
    row_of = {int(t): i for i, t in enumerate(track_ids)}
    near = nearest_cannot_linked(means, anchors, [[row_of[int(x)] for x in c] for c in links])
    return [int(track_ids[r]) if r >= 0 else None for r in near]


def title_constraints(table: pa.Table, gone: set) -> dict:
    """For the tracks of ``table`` (at least track_id, mean_embedding, tracklets, cannot_link)
    not in ``gone``: track_id -> (cannot_link without ``gone``, re-chosen hard negative)."""
    ids = table[S.TRACK_ID].to_numpy()
    keep = ~np.isin(ids, np.fromiter(gone, np.int64, len(gone)))
    t = table.filter(pa.array(keep))
    ids = t[S.TRACK_ID].to_numpy()
    dim = S.embedding_dim(t.schema)
    means = _rows(t[S.MEAN_EMBEDDING], dim)
    anchors = means.copy()
    tl = t[S.TRACKLETS].combine_chunks()
    has = tl.is_valid().to_numpy(zero_copy_only=False)
    if has.any():
        anchors[has] = _rows(pc.list_element(tl.filter(pa.array(has)), 0), dim)
    links = [[int(x) for x in (c or []) if int(x) not in gone] for c in t[S.CANNOT_LINK].to_pylist()]
    hard = hard_negatives(ids, means, anchors, links)
    return {int(i): (c, h) for i, c, h in zip(ids, links, hard)}


def _with_removed(schema: pa.Schema, n: int) -> pa.Schema:
    meta = S.read_metadata(schema)
    meta["removed_tracks"] = int(meta.get("removed_tracks", 0)) + n
    md = dict(schema.metadata or {})
    md[S.METADATA_KEY] = json.dumps(meta, sort_keys=True).encode()
    return schema.with_metadata(md)


def rewrite_shard(fs, root: str, path: str, gone: set) -> str:
    """Write the shard at ``path`` again without the tracks ``gone`` (module doc), row group by
    row group through a local file, uploaded atomically; -> the new sha256."""
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        small = pf.read(columns=[S.TRACK_ID, S.MEAN_EMBEDDING, S.TRACKLETS, S.CANNOT_LINK])
        fixed = title_constraints(small, gone)
        del small
        schema = _with_removed(pf.schema_arrow, len(gone))
        cl_i, hn_i = schema.get_field_index(S.CANNOT_LINK), schema.get_field_index(S.HARD_NEGATIVE)
        fd, tmp = tempfile.mkstemp(suffix=storage.SHARD_SUFFIX, prefix="takedown-")
        os.close(fd)
        try:
            with pq.ParquetWriter(tmp, schema, **S.parquet_options(schema)) as writer:
                for g in range(pf.num_row_groups):
                    t = pf.read_row_group(g)
                    t = t.filter(pa.array([int(x) in fixed for x in t[S.TRACK_ID].to_pylist()]))
                    if not t.num_rows:
                        continue
                    ids = [int(x) for x in t[S.TRACK_ID].to_pylist()]
                    t = t.set_column(cl_i, schema.field(cl_i), pa.array(
                        [fixed[i][0] for i in ids], schema.field(cl_i).type))
                    t = t.set_column(hn_i, schema.field(hn_i), pa.array(
                        [fixed[i][1] for i in ids], schema.field(hn_i).type))
                    writer.write_table(t.replace_schema_metadata(schema.metadata),
                                       row_group_size=t.num_rows)
            f.close()
            return storage.put_shard_file(fs, root, tmp)[1]
        finally:
            os.remove(tmp)


def shard_counts(fs, path: str) -> dict:
    """The manifest's counts of a shard (as ``harvest validate`` checks them)."""
    with fs.open(path, "rb") as f:
        t = pq.read_table(f, columns=[S.IS_VALID, S.N_FACES, S.CANNOT_LINK])
    return dict(tracks=t.num_rows,
                valid_tracks=int(pc.sum(t[S.IS_VALID]).as_py() or 0),
                faces=int(pc.sum(t[S.N_FACES]).as_py() or 0),
                cannot_link_pairs=int(pc.sum(pc.list_value_length(
                    t[S.CANNOT_LINK])).as_py() or 0) // 2)


def card_options(text: str) -> dict:
    """licence, pretty name and contact of a card written by ``harvest card``."""
    out = {}
    head = text.split("---", 2)[1] if text.startswith("---") else ""
    for line in head.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key == "license" and value:
            out["license"] = value
        elif key == "pretty_name" and value:
            out["pretty_name"] = json.loads(value) if value.startswith('"') else value
    m = re.search(r"can ask (.*?) to remove it\. ", text)
    if m and m.group(1) != "the publisher of this dataset":
        out["contact"] = m.group(1)
    return out


def _regenerate_card(fs, root: str, output: str) -> bool:
    from harvest.dataset.card import CARD_FILE, build_card
    path = posixpath.join(root, CARD_FILE)
    if not fs.exists(path):
        return False
    options = card_options(fs.cat_file(path).decode(errors="replace"))
    storage.write_atomic(fs, path, build_card(output, **options).encode())
    return True


def default_request_id(tracks: dict, reason: str) -> str:
    """The id of a request given without one: the same tracks and reason give the same id."""
    blob = json.dumps([{t: sorted(int(i) for i in v) for t, v in sorted(tracks.items())}, reason],
                      sort_keys=True)
    return "td-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _pending_path(root: str, request_id: str) -> str:
    name = hashlib.sha256(request_id.encode()).hexdigest()[:24]
    return posixpath.join(root, PENDING_DIR, f"{name}.json")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def remove_tracks(output: str, tracks: dict[str, set[int]], reason: str,
                  request_id: str | None = None) -> dict:
    """Remove ``tracks`` (title_id -> track ids) from the harvest at ``output`` (module doc).
    -> {"request_id", "titles", "tracks", "faces", "card", "per_title": {title_id: {"removed",
    "faces", "sha256_before", "sha256_after"}}}; a title without a shard is a ValueError."""
    if not reason or not str(reason).strip():
        raise ValueError("a takedown needs a reason (it goes to the audit log)")
    tracks = {str(t): {int(i) for i in ids} for t, ids in tracks.items()}
    request_id = request_id or default_request_id(tracks, reason)
    fs, root = storage.open_fs(output)
    shards = storage.list_shards(fs, root)
    missing = sorted(set(tracks) - set(shards))
    if missing:
        raise ValueError(f"title {missing[0]!r} has no shard in {output}")
    with storage.exclusive(fs, root, f"takedown {request_id}"):
        return _remove(fs, root, output, shards, tracks, reason, request_id)


def _remove(fs, root: str, output: str, shards: dict, tracks: dict, reason: str,
            request_id: str) -> dict:
    """``remove_tracks`` with the output's lock held."""
    pending = _pending_path(root, request_id)
    prior = json.loads(fs.cat_file(pending))["titles"] if fs.exists(pending) else {}

    plan, todo = {}, {}
    for tid in sorted(tracks):
        with fs.open(shards[tid], "rb") as f:
            t = pq.read_table(f, columns=[S.TRACK_ID, S.N_FACES])
        present = dict(zip(t[S.TRACK_ID].to_pylist(), t[S.N_FACES].to_pylist()))
        gone = tracks[tid] & set(present)
        faces = sum(int(present[i]) for i in gone)
        before = storage.sha256_file(fs, shards[tid])
        p = prior.get(tid)
        if p and p["sha256_before"] != before:      # this shard was rewritten by the crashed run
            plan[tid] = dict(removed=sorted(set(p["removed"]) | gone),
                             faces=int(p["faces"]) + faces, sha256_before=p["sha256_before"])
        else:
            plan[tid] = dict(removed=sorted(gone), faces=faces, sha256_before=before)
        if gone:
            todo[tid] = gone
    storage.write_atomic(fs, pending, json.dumps(dict(request_id=request_id, reason=reason,
                                                      titles=plan), sort_keys=True).encode())

    after = {tid: (rewrite_shard(fs, root, shards[tid], todo[tid]) if tid in todo
                   else storage.sha256_file(fs, shards[tid])) for tid in plan}
    records = storage.read_records(fs, root)
    for tid in plan:
        if tid in records:
            records[tid] = dict(records[tid], shard_path=storage.shard_path(root, tid),
                                shard_sha256=after[tid],
                                **shard_counts(fs, shards[tid]))
            storage.write_record(fs, root, records[tid])
    storage.write_manifest(fs, root, records)
    card = _regenerate_card(fs, root, output)

    per_title = {tid: dict(plan[tid], sha256_after=after[tid]) for tid in plan}
    entry = dict(request_id=request_id, reason=reason, time=_now(), resumed=bool(prior),
                 titles=per_title)
    audit = posixpath.join(root, AUDIT_FILE)
    old = fs.cat_file(audit) if fs.exists(audit) else b""
    storage.write_atomic(fs, audit, old + (json.dumps(entry, sort_keys=True) + "\n").encode())
    fs.rm(pending)
    return dict(request_id=request_id, titles=len(per_title), card=card,
                tracks=sum(len(v["removed"]) for v in per_title.values()),
                faces=sum(v["faces"] for v in per_title.values()), per_title=per_title)
