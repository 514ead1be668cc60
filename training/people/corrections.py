"""Corrections: what a person said about people, kept in ``corrections.jsonl`` and laid over
every build's links (so they outlast re-runs and new titles).

* ``merge A B``   B's tracks are A's from now on (a must-link; B's id is retired). Refused when
  A and B hold two tracks that share a frame.
* ``split P --tracks T:K ...``   those tracks leave P: to a new person (its id allocated once,
  stored in the correction) or marked ``not_face`` / ``unknown`` (``--as``). The tracks are
  pinned: later builds never put them back (a cannot-link to P).
* ``name P NAME``   a name, shown in every output; unique across people (case-insensitive).

The overlay never rewrites the links themselves: ``state/units.parquet`` keeps what the
algorithm decided, and :class:`Overlay` turns it into what the user sees.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from training.people.store import MARKS, StoreError


@dataclass
class Overlay:
    alias: dict = field(default_factory=dict)        # merged person -> person it went into
    names: dict = field(default_factory=dict)        # person -> name
    pinned: dict = field(default_factory=dict)       # (title, track) -> (person|None, status)
    removed: set = field(default_factory=set)        # persons taken down

    def resolve(self, person):
        seen = set()
        while person in self.alias and person not in seen:
            seen.add(person)
            person = self.alias[person]
        return person


def overlay(corrections: list[dict]) -> Overlay:
    """The corrections, in order, as one overlay (a later correction wins)."""
    ov = Overlay()
    for c in corrections:
        op = c["op"]
        if op == "name":
            ov.names[int(c["person"])] = c["name"]
        elif op == "merge":
            into, gone = ov.resolve(int(c["into"])), ov.resolve(int(c["person"]))
            if into != gone:
                ov.alias[gone] = into
                if into not in ov.names and gone in ov.names:
                    ov.names[into] = ov.names[gone]
                ov.names.pop(gone, None)
        elif op == "split":
            for title, track in c["tracks"]:
                ov.pinned[(title, int(track))] = (int(c["to"]), "corrected")
        elif op == "mark":
            for title, track in c["tracks"]:
                ov.pinned[(title, int(track))] = (None, c["as"])
        elif op == "remove":
            ov.removed.add(int(c["person"]))
            ov.names.pop(int(c["person"]), None)
        else:
            raise StoreError(f"corrections.jsonl: unknown op {op!r}")
    return ov


def find_person(people: dict, ref: str) -> int:
    """A person given by id or by name (``people``: id -> name or None)."""
    if str(ref).lstrip("-").isdigit() and int(ref) in people:
        return int(ref)
    hits = [p for p, n in people.items() if n is not None and n.casefold() == str(ref).casefold()]
    if len(hits) == 1:
        return hits[0]
    raise StoreError(f"person {ref!r}: no person with that id or name")


def check_name(people: dict, person: int, name: str) -> None:
    if not name.strip():
        raise StoreError("a name cannot be empty")
    for p, n in people.items():
        if p != person and n is not None and n.casefold() == name.casefold():
            raise StoreError(f"the name {name!r} is person {p}'s already (merge them if they "
                             "are one person)")


def check_mark(kind: str) -> str:
    if kind not in ("new",) + MARKS:
        raise StoreError(f"--as {kind!r}: one of new, {', '.join(MARKS)}")
    return kind


# ------------------------------------------------------------------------ the commands
def current_people(store) -> dict:
    """person id -> name of the people the store shows now."""
    from training.people.store import PEOPLE_FILE
    t = store.read_table(PEOPLE_FILE, ["person_id", "name"])
    return {} if t is None else dict(zip(t["person_id"].to_pylist(), t["name"].to_pylist()))


def tracks_of(store, person: int, titles=None) -> dict:
    """title_id -> sorted track ids that ``person`` holds now (from ``assignments/``)."""
    import pyarrow.compute as pc
    out = {}
    for tid in sorted(titles if titles is not None else store.header()["titles"]):
        t = store.read_table(store.assign_rel(tid), ["track_id", "person_id"])
        if t is None:
            continue
        ids = t.filter(pc.equal(t["person_id"], person))["track_id"].to_pylist()
        if ids:
            out[tid] = sorted(ids)
    return out


def co_occurring(store, a: dict, b: dict) -> list[tuple]:
    """(title, track of a, track of b) for tracks of ``a`` and ``b`` that share a frame."""
    out = []
    for tid in sorted(set(a) & set(b)):
        st = store.title_state(tid, ["track_id", "cannot_link"])
        links = dict(zip(st["track_id"].to_pylist(), st["cannot_link"].to_pylist()))
        bs = set(b[tid])
        out += [(tid, x, y) for x in a[tid] for y in links.get(x) or [] if y in bs]
    return out


def name(store, ref: str, new_name: str) -> dict:
    people = current_people(store)
    p = find_person(people, ref)
    check_name(people, p, new_name)
    entry = dict(op="name", person=p, name=new_name)
    store.add_correction(entry)
    return entry


def merge(store, into_ref: str, refs: list[str]) -> list[dict]:
    people = current_people(store)
    into = find_person(people, into_ref)
    entries = []
    for ref in refs:
        p = find_person(people, ref)
        if p == into:
            raise StoreError(f"person {ref!r} is person {into}: nothing to merge")
        clash = co_occurring(store, tracks_of(store, into), tracks_of(store, p))
        if clash:
            tid, x, y = clash[0]
            raise StoreError(f"persons {into} and {p} cannot be one person: their tracks "
                             f"{tid}:{x} and {tid}:{y} share a frame ({len(clash)} such pairs)")
        entries.append(dict(op="merge", into=into, person=p))
    for e in entries:
        store.add_correction(e)
    return entries


def split(store, ref: str, tracks: list[tuple], kind: str = "new") -> dict:
    """Move ``tracks`` ((title, track) pairs, each now ``ref``'s) off the person."""
    people = current_people(store)
    p = find_person(people, ref)
    check_mark(kind)
    hdr = store.header()
    titles = {t for t, _ in tracks}
    unknown = sorted(titles - set(hdr["titles"]))
    if unknown:
        raise StoreError(f"title {unknown[0]!r} is not in the store")
    held = tracks_of(store, p, titles)
    stray = [f"{t}:{k}" for t, k in tracks if k not in held.get(t, ())]
    if stray:
        raise StoreError(f"track(s) {', '.join(stray)} are not person {p}'s")
    pairs = [[t, int(k)] for t, k in sorted(set(tracks))]
    if kind == "new":
        entry = dict(op="split", person=p, to=hdr["next_person_id"], tracks=pairs)
        hdr["next_person_id"] += 1
        store.write_header(hdr)
    else:
        entry = {"op": "mark", "as": kind, "person": p, "tracks": pairs}
    store.add_correction(entry)
    return entry
