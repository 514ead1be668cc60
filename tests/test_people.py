"""`people` end to end on a real 3-title harvest (identities recur from title to title):
people across titles that honour every cannot-link, stable ids when a title is added, a re-run
that changes no byte, corrections that outlast builds, search, exports, one-line errors."""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import FACE_PACK, need
from test_methods_e2e import harvest_once


@pytest.fixture(scope="module")
def harvested(tmp_path_factory, ray_cluster):
    need(FACE_PACK)
    return harvest_once(tmp_path_factory)


def people(*argv) -> int:
    from training.people.cli import main
    return main([str(a) for a in argv])


def snapshot(root) -> dict:
    """Every file of a store: relative path -> bytes."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def assignments(store) -> dict:
    """(title_id, track_id) -> person_id (None: marked)."""
    out = {}
    for f in sorted(os.listdir(os.path.join(store, "assignments"))):
        t = pq.read_table(os.path.join(store, "assignments", f))
        out.update({(a, b): c for a, b, c in zip(t["title_id"].to_pylist(),
                                                  t["track_id"].to_pylist(),
                                                  t["person_id"].to_pylist())})
    return out


def valid_tracks(shards) -> dict:
    """(title_id, track_id) -> its cannot-link track ids, every valid track of the shards."""
    from training.data import list_shards
    out = {}
    for path in list_shards(shards):
        t = pq.read_table(path, columns=["title_id", "track_id", "is_valid", "cannot_link"])
        t = t.filter(t["is_valid"])
        out.update({(a, b): c or [] for a, b, c in zip(t["title_id"].to_pylist(),
                                                        t["track_id"].to_pylist(),
                                                        t["cannot_link"].to_pylist())})
    return out


@pytest.fixture(scope="module")
def built(harvested, tmp_path_factory):
    """People of the first two titles, then the third added: (root, title_of, store, the
    first build's assignments, the first build's snapshot)."""
    root, title_of = harvested
    shards = root / "harvest" / "shards"
    store = tmp_path_factory.mktemp("people") / "store"
    assert people("build", "--shards", shards, "--output", store, "--titles", "title_0.mp4",
                  title_of["title_1.mp4"]) == 0
    first = assignments(store)
    first_snap = snapshot(store)
    assert people("build", "--shards", shards, "--output", store) == 0
    return root, title_of, store, first, first_snap


def test_build_covers_every_valid_track_once_and_honours_cannot_links(built):
    root, title_of, store, _, _ = built
    valid = valid_tracks(root / "harvest" / "shards")
    got = assignments(store)
    assert set(got) == set(valid)                                 # every valid track, once
    assert all(p is not None for p in got.values())
    pairs = 0
    for (tid, k), links in valid.items():
        for other in links:
            pairs += 1
            assert got[(tid, k)] != got[(tid, other)]             # never one person
    assert pairs > 0
    table = pq.read_table(os.path.join(store, "people.parquet")).to_pylist()
    ids = [r["person_id"] for r in table]
    assert ids == sorted(set(ids)) and set(ids) == set(got.values())
    for r in table:
        mine = [key for key, p in got.items() if p == r["person_id"]]
        assert r["n_tracks"] == len(mine)
        assert r["titles"] == sorted({t for t, _ in mine}) and r["n_titles"] == len(r["titles"])
        assert r["screen_seconds"] > 0
    head = json.loads(open(os.path.join(store, "store.json")).read())
    assert head["format"] == 1 and set(head["titles"]) == set(title_of.values())
    assert head["next_person_id"] > max(ids)


def test_people_span_titles_and_match_the_labels(built):
    from training.cli import _track_identities
    from training.evaluation.metrics import clustering_scores
    root, _, store, _, _ = built
    ids = _track_identities(str(root / "harvest" / "shards"), str(root / "videos" / "labels.csv"))
    got = assignments(store)
    keys = sorted(k for k in ids if k in got)
    y, p = [ids[k] for k in keys], [got[k] for k in keys]
    s = clustering_scores(np.asarray(y), np.asarray(p))
    spanning = [q for q in set(p) if len({t for (t, _), x in zip(keys, p) if x == q}) > 1]
    assert spanning                                         # identities recur: people span titles
    assert s["wcp"] == 1.0 and s["nmi"] > 0.9, s            # one still photo per identity


def test_adding_a_title_keeps_ids_and_a_rerun_changes_no_byte(built, harvested):
    root, title_of, store, first, first_snap = built
    now = assignments(store)
    assert {k: now[k] for k in first} == first                # existing tracks keep their person
    old_ids = set(first.values())
    new_title = title_of["title_2.mp4"]
    assert any(p in old_ids for (t, _), p in now.items() if t == new_title)   # joined old people
    for rel in first_snap:                                      # old titles' state untouched
        if rel.startswith("state/titles/") or rel.startswith("assignments/"):
            assert snapshot(store)[rel] == first_snap[rel], rel
    before = snapshot(store)
    assert people("build", "--shards", root / "harvest" / "shards", "--output", store) == 0
    assert snapshot(store) == before                           # nothing new: no byte changes


def test_corrections_last_across_builds_and_reach_every_output(built, tmp_path, capsys):
    import shutil
    root, title_of, src, _, _ = built
    store = tmp_path / "store"
    shutil.copytree(src, store)
    valid = valid_tracks(root / "harvest" / "shards")
    got = assignments(store)
    counts = {}
    for p in got.values():
        counts[p] = counts.get(p, 0) + 1
    big = max(counts, key=lambda p: (counts[p], -p))
    # a merge of two people who share a frame is refused, in one line, exit 2
    (tid, k), links = next((key, links) for key, links in valid.items() if links)
    a, b = got[(tid, k)], got[(tid, links[0])]
    capsys.readouterr()
    assert people("merge", a, b, "--output", store) == 2
    err = capsys.readouterr().err
    assert "share a frame" in err and len(err.strip().splitlines()) == 1
    assert people("name", big, "Ada Lovelace", "--output", store) == 0
    assert people("name", a if a != big else b, "ada lovelace", "--output", store) == 2
    mine = sorted(key for key, p in got.items() if p == big)
    off, mark = mine[0], mine[1]
    assert people("split", "Ada Lovelace", "--tracks", f"{off[0]}:{off[1]}", "--output",
                  store) == 0
    assert people("split", big, "--tracks", f"{mark[0]}:{mark[1]}", "--as", "not_face",
                  "--output", store) == 0
    lines = [json.loads(x) for x in open(store / "corrections.jsonl").read().splitlines()]
    assert [c["op"] for c in lines] == ["name", "split", "mark"]
    assert people("build", "--shards", root / "harvest" / "shards", "--output", store) == 0
    after = assignments(store)
    assert after[mark] is None and after[off] == lines[1]["to"] and after[off] not in counts
    rows = {r["person_id"]: r for r in pq.read_table(store / "people.parquet").to_pylist()}
    assert rows[big]["name"] == "Ada Lovelace" and rows[big]["n_tracks"] == counts[big] - 2
    t = pq.read_table(store / "assignments" / f"{mark[0]}.parquet").to_pylist()
    assert {r["track_id"]: r["status"] for r in t}[mark[1]] == "not_face"
    # a merge of two people who never share a frame
    other = next(p for p in rows if p not in (big, after[off]) and not any(
        after.get((t_, x)) == big for (t_, k_), links in valid.items() if after[(t_, k_)] == p
        for x in links))
    assert people("merge", "Ada Lovelace", other, "--output", store) == 0
    merged = assignments(store)
    assert all(merged[key] == big for key, p in after.items() if p == other)
    assert people("export", "--output", store, "--to", tmp_path / "exp") == 0
    doc = json.loads(open(tmp_path / "exp" / "people.json").read())
    ada = next(p for p in doc["people"] if p["person_id"] == big)
    assert ada["name"] == "Ada Lovelace" and other not in [p["person_id"] for p in doc["people"]]
    vtt = open(tmp_path / "exp" / "titles" / f"{ada['titles'][0]['title_id']}.vtt").read()
    assert vtt.startswith("WEBVTT\n") and "Ada Lovelace" in vtt


def test_export_cues_cover_each_persons_tracks(built, tmp_path):
    from training.people.export import vtt_time
    root, _, store, _, _ = built
    assert people("export", "--output", store, "--to", tmp_path / "exp", "--report",
                  tmp_path / "rep", "--shards", root / "harvest" / "shards") == 0
    assert os.path.exists(tmp_path / "rep" / "index.html")
    got = assignments(store)
    for f in os.listdir(tmp_path / "exp" / "titles"):
        if not f.endswith(".json"):
            continue
        doc = json.loads(open(tmp_path / "exp" / "titles" / f).read())
        state = pq.read_table(os.path.join(store, "state", "titles", f.replace(".json",
                                                                             ".parquet")))
        for k, a, b in zip(state["track_id"].to_pylist(), state["start_s"].to_pylist(),
                           state["end_s"].to_pylist()):
            p = got[(doc["title_id"], k)]
            assert any(c["person_id"] == p and c["start"] <= a + 1e-3 and b <= c["end"] + 1e-3
                       for c in doc["cues"])                    # each track inside a cue
        vtt = open(tmp_path / "exp" / "titles" / f.replace(".json", ".vtt")).read()
        assert vtt.count(" --> ") == len(doc["cues"])
    assert vtt_time(3723.5) == "01:02:03.500"


def test_search_by_track_finds_itself_and_its_person(built, capsys):
    root, _, store, _, _ = built
    got = assignments(store)
    (tid, k), p = sorted(got.items())[0]
    capsys.readouterr()
    assert people("search", "--track", f"{tid}:{k}", "--output", store, "--top", "3") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "people:" and f"person {p}" in out[1]
    tracks = out[out.index("tracks:") + 1]
    assert f"{tid}:{k}" in tracks and tracks.split()[0] == "1.0000"


def test_usage_mistakes_are_one_line(built, tmp_path, capsys):
    _, _, store, _, _ = built
    for argv in (["name", "999999", "X", "--output", store],
                 ["name", "0", "X", "--output", tmp_path / "nothing"],
                 ["split", "0", "--tracks", "nope", "--output", store],
                 ["search", "--track", "no_such_title:1", "--output", store]):
        capsys.readouterr()
        assert people(*argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("people: "), (argv, err)


def test_a_store_another_command_is_changing_is_refused_in_one_line(built, capsys):
    from conftest import LockHolder
    _, _, store, _, _ = built
    before = snapshot(store)
    holder = LockHolder(store, "people build")
    try:
        capsys.readouterr()
        assert people("name", "0", "Locked Out", "--output", store) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "being changed by people build (pid" in err[0], err
    finally:
        holder.release()
    assert snapshot(store) == before
