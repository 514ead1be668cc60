"""Takedown (``harvest.dataset.takedown.remove_tracks``) on a real harvest (crowd.mp4, a two-shot sample
clip and a failed title, SCRFD + MobileFaceNet; the session's harvest of tests/test_card.py,
copied per test): rows gone, constraints of the remaining tracks consistent and re-mined by the
harvest's rule, records / manifest / card / audit log consistent, `harvest validate` clean,
idempotent re-runs, and a crash between the shards and the manifest that a re-run repairs."""
from __future__ import annotations

import datetime
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_card import harvest_output

from harvest import cli
from harvest.dataset import storage
from harvest.dataset import schema as S
from harvest.dataset.card import build_card
from harvest.dataset.takedown import AUDIT_FILE, PENDING_DIR, remove_tracks
from harvest.dataset.validate import validate_output

CONSTRAINTS = ("cannot_link", "hard_negative")


@pytest.fixture(scope="module")
def source(tmp_path_factory, ray_cluster):
    return harvest_output(tmp_path_factory)


@pytest.fixture
def out(source, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(source, dst)
    return str(dst)


def shard(out, tid) -> pq.Table:
    return pq.read_table(os.path.join(out, "shards", f"{tid}.parquet"))


def files(out) -> dict:
    """Every file of the output: relative path -> bytes."""
    got = {}
    for d, _, names in os.walk(out):
        for n in names:
            p = os.path.join(d, n)
            got[os.path.relpath(p, out)] = open(p, "rb").read()
    return got


def audit(out) -> list[dict]:
    path = os.path.join(out, AUDIT_FILE)
    return [json.loads(x) for x in open(path)] if os.path.exists(path) else []


def harvest_rule(table) -> dict:
    """The hard negative of every track, computed here from the stored columns by the rule of
    docs/methods.md section 0: the cannot-linked track whose mean is nearest (Euclidean) the
    anchor tracklet (the mean when the track has no tracklets); first on ties; None if none."""
    ids = table["track_id"].to_pylist()
    mean = {i: np.asarray(m, np.float32) for i, m in zip(ids, table["mean_embedding"].to_pylist())}
    out = {}
    for i, tl, links in zip(ids, table["tracklets"].to_pylist(), table["cannot_link"].to_pylist()):
        anchor = mean[i] if tl is None else np.asarray(tl[0], np.float32)
        d = [np.linalg.norm(mean[j] - anchor) for j in links]
        out[i] = links[int(np.argmin(d))] if links else None
    return out


def pick(out):
    """The title with the most cannot-links and 3 of its tracks to remove: one that is another
    track's hard negative, and two more with cannot-links."""
    recs = {r["title_id"]: r for r in map(json.loads, open(os.path.join(out, "manifest.jsonl")))}
    tid = max((t for t, r in recs.items() if r["status"] == "done"),
              key=lambda t: recs[t]["cannot_link_pairs"])
    t = shard(out, tid)
    hn = [h for h in t["hard_negative"].to_pylist() if h is not None]
    assert hn, "the fixture title must have hard negatives"
    target = max(set(hn), key=hn.count)
    linked = [i for i, c in zip(t["track_id"].to_pylist(), t["cannot_link"].to_pylist())
              if c and i != target]
    assert len(linked) >= 4, "the fixture title must have co-occurring tracks"
    return tid, {target, linked[0], linked[len(linked) // 2]}


def test_rule_of_the_test_is_the_harvests(source):
    """The rule the tests recompute reproduces every hard negative the harvest wrote."""
    for tid in storage.list_shards(*storage.open_fs(source)):
        t = shard(source, tid)
        assert harvest_rule(t) == dict(zip(t["track_id"].to_pylist(),
                                           t["hard_negative"].to_pylist()))


def test_takedown_removes_tracks_and_keeps_the_output_valid(out):
    assert cli.main(["card", out, "--license", "cc-by-nc-4.0", "--pretty-name",
                     "Takedown test", "--contact", "privacy@example.org"]) == 0
    before = files(out)
    tid, gone = pick(out)
    old = shard(out, tid)
    old_meta = S.read_metadata(old.schema)
    n_gone_faces = sum(n for i, n in zip(old["track_id"].to_pylist(), old["n_faces"].to_pylist())
                       if i in gone)
    repointed = [i for i, h in zip(old["track_id"].to_pylist(), old["hard_negative"].to_pylist())
                 if h in gone and i not in gone]
    assert repointed

    summary = remove_tracks(out, {tid: gone}, "subject asked to be removed", "REQ-1")
    assert (summary["titles"], summary["tracks"], summary["faces"]) == (1, 3, n_gone_faces)
    assert summary["card"] is True

    new = shard(out, tid)
    ids = new["track_id"].to_pylist()
    # rows gone, the others kept with their ids (not renumbered) and untouched columns
    assert ids == [i for i in old["track_id"].to_pylist() if i not in gone]
    kept = old.filter(np.isin(old["track_id"].to_numpy(), list(gone), invert=True))
    others = [c for c in S.shard_schema(S.embedding_dim(old.schema)).names if c not in CONSTRAINTS]
    assert new.select(others).equals(kept.select(others))
    assert new.schema.remove_metadata() == old.schema.remove_metadata()
    meta = S.read_metadata(new.schema)
    assert meta.pop("removed_tracks") == 3 and meta == old_meta
    # constraints: removed ids left every list; hard negatives re-chosen by the harvest's rule
    old_links = dict(zip(old["track_id"].to_pylist(), old["cannot_link"].to_pylist()))
    links = dict(zip(ids, new["cannot_link"].to_pylist()))
    assert links == {i: [j for j in old_links[i] if j not in gone] for i in ids}
    assert not gone & {j for c in links.values() for j in c}
    hard = dict(zip(ids, new["hard_negative"].to_pylist()))
    assert all(h is None if not links[i] else h in links[i] for i, h in hard.items())
    assert hard == harvest_rule(new)
    old_hard = dict(zip(old["track_id"].to_pylist(), old["hard_negative"].to_pylist()))
    assert all(hard[i] == old_hard[i] for i in ids if old_hard[i] not in gone)
    assert all(hard[i] != old_hard[i] for i in repointed)

    # records, manifest, card
    rec = json.load(open(os.path.join(out, "manifest", f"{tid}.json")))
    old_rec = json.loads(before[f"manifest/{tid}.json"])
    data = open(os.path.join(out, "shards", f"{tid}.parquet"), "rb").read()
    assert rec["shard_sha256"] == storage.sha256_bytes(data)
    assert rec["tracks"] == len(ids) == old_rec["tracks"] - 3
    assert rec["faces"] == old_rec["faces"] - n_gone_faces == sum(new["n_faces"].to_pylist())
    assert rec["valid_tracks"] == sum(new["is_valid"].to_pylist())
    assert rec["cannot_link_pairs"] == sum(map(len, links.values())) // 2
    assert rec["shard_path"] == os.path.join(out, "shards", f"{tid}.parquet")
    same = S.COUNT_FIELDS + ("shard_sha256", "shard_path")
    assert {k: v for k, v in rec.items() if k not in same} == \
        {k: v for k, v in old_rec.items() if k not in same}
    manifest = [json.loads(x) for x in open(os.path.join(out, "manifest.jsonl"))]
    assert manifest == [json.load(open(os.path.join(out, "manifest", f"{r['title_id']}.json")))
                        for r in manifest]
    card = open(os.path.join(out, "README.md")).read()
    assert card != before["README.md"].decode()
    assert card == build_card(out, license="cc-by-nc-4.0", pretty_name="Takedown test",
                              contact="privacy@example.org")
    # other titles untouched, byte for byte
    after = files(out)
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed == {f"shards/{tid}.parquet", f"manifest/{tid}.json", "manifest.jsonl",
                       "README.md", AUDIT_FILE}

    # the audit log: one line, ids and counts, no embeddings
    (line,) = audit(out)
    assert set(line) == {"request_id", "reason", "time", "resumed", "titles"}
    assert (line["request_id"], line["reason"], line["resumed"]) == \
        ("REQ-1", "subject asked to be removed", False)
    assert datetime.datetime.fromisoformat(line["time"]).tzinfo is not None
    assert line["titles"] == {tid: dict(removed=sorted(gone), faces=n_gone_faces,
                                        sha256_before=old_rec["shard_sha256"],
                                        sha256_after=rec["shard_sha256"])}
    assert len(open(os.path.join(out, AUDIT_FILE), "rb").read()) < 1000

    report = validate_output(out)
    assert report["ok"], report
    assert cli.main(["validate", out]) == 0

    # the same request again: nothing changes but a new audit line that removed nothing
    again = remove_tracks(out, {tid: gone}, "subject asked to be removed", "REQ-1")
    assert (again["tracks"], again["faces"]) == (0, 0)
    assert {p: b for p, b in files(out).items() if p != AUDIT_FILE} == \
        {p: b for p, b in after.items() if p != AUDIT_FILE}
    first, second = audit(out)
    assert first == line
    assert second["titles"] == {tid: dict(removed=[], faces=0, sha256_before=rec["shard_sha256"],
                                          sha256_after=rec["shard_sha256"])}
    assert not os.listdir(os.path.join(out, PENDING_DIR))

    # a second takedown on the same title counts on in the metadata; validate stays clean
    rest = [i for i, c in links.items() if c][:1]
    remove_tracks(out, {tid: set(rest)}, "second request")
    assert S.read_metadata(shard(out, tid).schema)["removed_tracks"] == 4
    assert validate_output(out)["ok"]


def test_unknown_title_and_empty_reason_are_refused(out):
    with pytest.raises(ValueError, match="no shard"):
        remove_tracks(out, {"no_such_title": {0}}, "x")
    tid, gone = pick(out)
    with pytest.raises(ValueError, match="reason"):
        remove_tracks(out, {tid: gone}, " ")
    assert not audit(out)


def test_crash_between_shards_and_manifest_then_rerun(out, tmp_path, monkeypatch):
    if os.path.exists(os.path.join(out, "README.md")):
        os.remove(os.path.join(out, "README.md"))
    tid, gone = pick(out)
    sha_before = storage.sha256_file(*storage.open_fs(os.path.join(out, "shards",
                                                                   f"{tid}.parquet")))
    # the reference: the same request, uninterrupted, on another copy
    ref = str(tmp_path / "ref")
    shutil.copytree(out, ref)
    remove_tracks(ref, {tid: gone}, "crash test")

    def crash(*a, **k):
        raise OSError("injected: the machine died before the manifest")
    monkeypatch.setattr(storage, "write_manifest", crash)
    with pytest.raises(OSError, match="injected"):
        remove_tracks(out, {tid: gone}, "crash test")
    monkeypatch.undo()
    # the crash left the new shard, a stale manifest.jsonl, no audit line, the pending plan
    assert not gone & set(shard(out, tid)["track_id"].to_pylist())
    assert not audit(out)
    assert len(os.listdir(os.path.join(out, PENDING_DIR))) == 1
    assert not validate_output(out)["ok"] or validate_output(out)["warnings"]

    summary = remove_tracks(out, {tid: gone}, "crash test")
    report = validate_output(out)
    assert report["ok"] and not report["warnings"], report
    (line,) = audit(out)
    assert line["resumed"] is True and summary["tracks"] == 3
    assert line["titles"][tid]["removed"] == sorted(gone)
    assert line["titles"][tid]["sha256_before"] == sha_before
    assert line["titles"][tid] == audit(ref)[0]["titles"][tid]
    assert not os.path.exists(os.path.join(out, "README.md"))
    # the repaired output is the uninterrupted one, byte for byte (but the log's time and the
    # records' shard_path, which names each copy's own shard)
    assert {p: b for p, b in files(out).items() if p != AUDIT_FILE} == \
        {p: b.replace(ref.encode(), out.encode()) for p, b in files(ref).items()
         if p != AUDIT_FILE}


def test_one_takedown_at_a_time(out):
    """A takedown while another command holds the output's lock fails at once, naming it, and
    changes nothing; once the holder ends it runs. A holder that died holding the lock (killed,
    on this machine) does not block the next takedown."""
    from conftest import LockHolder
    tid, gone = pick(out)
    before = files(out)
    holder = LockHolder(out, "takedown td-first")
    try:
        with pytest.raises(storage.OutputBusy, match=r"takedown td-first \(pid \d+ on "):
            remove_tracks(out, {tid: gone}, "second")
        assert {p: b for p, b in files(out).items() if p != storage.LOCK_FILE} == before
        assert any(storage.LOCK_FILE in w for w in validate_output(out)["warnings"])
    finally:
        holder.release()
    assert not os.path.exists(os.path.join(out, storage.LOCK_FILE))
    assert remove_tracks(out, {tid: {min(gone)}}, "second")["tracks"] == 1
    LockHolder(out, "takedown td-killed").kill()
    assert os.path.exists(os.path.join(out, storage.LOCK_FILE))
    assert remove_tracks(out, {tid: gone}, "third")["tracks"] == len(gone) - 1
    assert not os.path.exists(os.path.join(out, storage.LOCK_FILE))
    report = validate_output(out)
    assert report["ok"] and not report["warnings"], report
