"""``people export``: who is on screen when, for players and for people.

    TO/people.json                 per person: id, name, screen seconds, per title its
                                   time ranges (the union of the person's track spans)
    TO/titles/<title_id>.vtt       a WebVTT track: one cue per person and time range, the cue
                                   text the person's name (or "person N"); players show it as
                                   a subtitle or metadata track
    TO/titles/<title_id>.json      the same cues as JSON

``--report DIR`` (with ``--shards``) writes person pages that span titles: per person a strip
of representative face crops from each title it appears in.
"""
from __future__ import annotations

import json
import posixpath

import numpy as np

from harvest.dataset.storage import open_fs, write_atomic
from training.people.store import PEOPLE_FILE, Store
from training.people.titles import merge_spans


def label(pid: int, name: str | None) -> str:
    return name or f"person {pid}"


def vtt_time(s: float) -> str:
    ms = int(round(s * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def title_cues(store: Store, tid: str, names: dict) -> list[dict]:
    """The person cues of one title, by start time, then person."""
    a = store.read_table(store.assign_rel(tid), ["track_id", "person_id"])
    st = store.title_state(tid, ["track_id", "start_s", "end_s"])
    assert a["track_id"].to_pylist() == st["track_id"].to_pylist()
    person = a["person_id"].to_numpy(zero_copy_only=False)
    start, end = st["start_s"].to_numpy(), st["end_s"].to_numpy()
    cues = []
    for p in sorted({int(x) for x in person if x == x}):
        rows = np.flatnonzero(person == p)
        cues += [dict(person_id=p, name=names.get(p), start=round(s, 3), end=round(e, 3))
                 for s, e in merge_spans(start[rows], end[rows])]
    return sorted(cues, key=lambda c: (c["start"], c["person_id"]))


def webvtt(cues: list[dict]) -> str:
    out = ["WEBVTT", ""]
    for i, c in enumerate(cues):
        out += [str(i + 1), f"{vtt_time(c['start'])} --> {vtt_time(c['end'])}",
                label(c["person_id"], c["name"]), ""]
    return "\n".join(out)


def export(store_url: str, to: str) -> dict:
    store = Store(store_url)
    hdr = store.header()
    people = store.read_table(PEOPLE_FILE).to_pylist()
    names = {p["person_id"]: p["name"] for p in people}
    fs, root = open_fs(to)
    ranges: dict[int, list] = {p["person_id"]: [] for p in people}
    for tid in sorted(hdr["titles"]):
        cues = title_cues(store, tid, names)
        write_atomic(fs, posixpath.join(root, "titles", f"{tid}.vtt"), webvtt(cues).encode())
        write_atomic(fs, posixpath.join(root, "titles", f"{tid}.json"),
                     json.dumps(dict(title_id=tid, source_uri=hdr["titles"][tid]["source_uri"],
                                     cues=cues), indent=1).encode())
        for c in cues:
            ranges[c["person_id"]].append((tid, c["start"], c["end"]))
    doc = []
    for p in people:
        by_title: dict[str, list] = {}
        for tid, s, e in ranges[p["person_id"]]:
            by_title.setdefault(tid, []).append([s, e])
        doc.append(dict(person_id=p["person_id"], name=p["name"], n_tracks=p["n_tracks"],
                        screen_seconds=p["screen_seconds"],
                        titles=[dict(title_id=t, source_uri=hdr["titles"][t]["source_uri"],
                                     ranges=r) for t, r in sorted(by_title.items())]))
    write_atomic(fs, posixpath.join(root, "people.json"),
                 json.dumps(dict(people=doc), indent=1).encode())
    return dict(people=len(doc), titles=len(hdr["titles"]), to=to)


def person_report(store_url: str, shards: str, out: str, max_tracks: int = 24) -> str:
    """Person pages spanning titles (``harvest.reports`` building blocks): per person,
    per title, a strip of the representative crops of its most confident tracks."""
    from harvest.reports.galleries import representative_thumbs
    from harvest.reports.page import INDEX, Writer, esc, href, page_html, sprite_bytes, sprite_html
    from training.data import shard_info
    store = Store(store_url)
    hdr = store.header()
    paths = {i["title_id"]: i["path"] for i in shard_info(shards)}
    people = store.read_table(PEOPLE_FILE).to_pylist()
    by_person: dict[int, dict] = {}
    for tid in sorted(hdr["titles"]):
        a = store.read_table(store.assign_rel(tid), ["track_id", "person_id", "confidence"])
        for t, p, c in zip(*(a[k].to_pylist() for k in ("track_id", "person_id",
                                                        "confidence"))):
            if p is not None:
                by_person.setdefault(p, {}).setdefault(tid, []).append((-c, t))
    writer, rows = Writer(out), []
    for p in people:
        pid, name = p["person_id"], label(p["person_id"], p["name"])
        parts = [f"<h1>{esc(name)}</h1><nav><a href='{INDEX}'>index</a></nav><div class=meta>"
                 f"{p['n_tracks']} tracks in {p['n_titles']} title(s) · "
                 f"{p['screen_seconds']:.1f} s on screen</div>"]
        for tid, tracks in sorted(by_person.get(pid, {}).items()):
            chosen = [t for _, t in sorted(tracks)[:max_tracks]]
            if tid not in paths:
                parts.append(f"<p>{esc(tid)}: shard not in --shards</p>")
                continue
            thumbs = representative_thumbs(paths[tid], chosen)
            rel = f"img/p{pid}-{tid}.jpg"
            writer.write(rel, sprite_bytes([thumbs[t] for t in chosen]))
            parts.append(f"<div class=gallery><div class=meta><b>{esc(tid)}</b> · "
                         f"{len(tracks)} track(s)</div>"
                         + sprite_html(href(*rel.split("/")),
                                       [(f"#{t}", f"{tid}:{t}", "", None) for t in chosen],
                                       f"{name} in {tid}") + "</div>")
        writer.write(f"person-{pid}.html", page_html(name, "".join(parts)))
        rows.append(f"<tr><td class=l><a href='person-{pid}.html'>{esc(name)}</a></td>"
                    f"<td>{p['n_tracks']}</td><td>{p['n_titles']}</td>"
                    f"<td>{p['screen_seconds']:.1f}</td></tr>")
    writer.write(INDEX, page_html("People", "<h1>People across titles</h1><table><tr>"
                                  "<th class=l>person</th><th>tracks</th><th>titles</th>"
                                  "<th>seconds</th></tr>" + "".join(rows) + "</table>"))
    return writer.where()
