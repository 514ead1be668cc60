"""``people search``: the people and tracks of the whole corpus nearest to a photo or a track.

A photo is detected, aligned and embedded by the same backend and model pack as the harvest
(``harvest.faces.photo``); a pack whose sha256 differs from the one the store's titles were
harvested with is refused (embeddings of two recognisers are not comparable). With a head the
query goes through the head, as the tracks did. People are ranked by cosine similarity to their
prototype (the normalised sum of their tracks' embeddings, corrections applied); tracks by
cosine similarity to their own embedding, streamed title by title (memory: one title's state).
"""
from __future__ import annotations

import heapq

import numpy as np
import pyarrow.compute as pc

from training.people import link as corpus
from training.people.build import _old_units, prototypes
from training.people.corrections import current_people, overlay
from training.people.store import Store, StoreError, vectors


def resolve_title(hdr: dict, name: str) -> str:
    """A title of the store by title_id or source file name (with or without extension)."""
    if name in hdr["titles"]:
        return name
    hits = [t for t, v in hdr["titles"].items()
            if name in ((src := (v.get("source_uri") or "").rstrip("/").split("/")[-1]),
                        src.rsplit(".", 1)[0])]
    if len(hits) != 1:
        raise StoreError(f"title {name!r}: " + ("in no title of the store" if not hits else
                                                 f"names {len(hits)} titles; use the title_id"))
    return hits[0]


def photo_query(hdr: dict, photo: str, models: str | None) -> np.ndarray:
    from harvest.faces.photo import check_pack, embed_photo
    backend = hdr["pack"]["backend"]
    check_pack(hdr["pack"], models, backend)
    emb, _ = embed_photo(photo, models, backend)
    return head_query(hdr, emb)


def head_query(hdr: dict, emb: np.ndarray) -> np.ndarray:
    """A raw recogniser embedding in the store's space (through the head, if any)."""
    if hdr.get("head"):
        from training.registry import embed_rows
        from training.checkpoints import load_head
        _, model, _ = load_head(hdr["head"])
        emb = embed_rows(model, np.asarray(emb, np.float32)[None])[0]
    return corpus.unit(np.asarray(emb, np.float32))


def track_query(store: Store, hdr: dict, track: tuple) -> np.ndarray:
    tid = resolve_title(hdr, track[0])
    st = store.title_state(tid, ["track_id", "embedding"])
    rows = np.flatnonzero(st["track_id"].to_numpy() == track[1])
    if len(rows) == 0:
        raise StoreError(f"track {tid}:{track[1]} is not a valid track of the store")
    return vectors(st["embedding"], hdr["dim"])[rows[0]]


def rank_people(store: Store, hdr: dict, q: np.ndarray, top: int) -> list[dict]:
    ov = overlay(store.corrections())
    ids, sums, titles = prototypes(store, _old_units(store, set()), ov, hdr["dim"])
    shown = current_people(store)
    keep = [i for i, p in enumerate(ids) if p in shown]
    if not keep:
        return []
    sims = corpus.unit(sums[keep]) @ q
    order = np.argsort(-sims, kind="stable")[:top]
    return [dict(person_id=int(ids[keep[i]]), name=shown[ids[keep[i]]],
                 similarity=round(float(sims[i]), 4), titles=sorted(titles[keep[i]]))
            for i in order]


def rank_tracks(store: Store, hdr: dict, q: np.ndarray, top: int) -> list[dict]:
    best: list = []
    for tid in sorted(hdr["titles"]):
        st = store.title_state(tid, ["track_id", "start_s", "end_s", "embedding"])
        sims = vectors(st["embedding"], hdr["dim"]) @ q
        for i in np.argsort(-sims, kind="stable")[:top]:
            item = (float(sims[i]), tid, int(st["track_id"][int(i)].as_py()),
                    float(st["start_s"][int(i)].as_py()), float(st["end_s"][int(i)].as_py()))
            heapq.heappush(best, item) if len(best) < top else heapq.heappushpop(best, item)
    out = []
    for s, tid, track, a, b in sorted(best, key=lambda x: (-x[0], x[1], x[2])):
        t = store.read_table(store.assign_rel(tid), ["track_id", "person_id"])
        pid = t.filter(pc.equal(t["track_id"], track))["person_id"][0].as_py()
        out.append(dict(title_id=tid, track_id=track, person_id=pid, similarity=round(s, 4),
                        start_s=round(a, 3), end_s=round(b, 3)))
    return out


def search(store_url: str, photo: str | None = None, track: tuple | None = None,
           models: str | None = None, top: int = 10) -> dict:
    store = Store(store_url)
    hdr = store.header()
    q = photo_query(hdr, photo, models) if photo else track_query(store, hdr, track)
    return dict(people=rank_people(store, hdr, q, top), tracks=rank_tracks(store, hdr, q, top))


def format_results(res: dict) -> str:
    lines = ["people:"] + [f"  {r['similarity']:7.4f}  person {r['person_id']}"
                           + (f" ({r['name']})" if r["name"] else "")
                           + f"  in {', '.join(r['titles'])}" for r in res["people"]]
    lines += ["tracks:"] + [f"  {r['similarity']:7.4f}  {r['title_id']}:{r['track_id']}  "
                            f"{r['start_s']:.2f}-{r['end_s']:.2f}s  person {r['person_id']}"
                            for r in res["tracks"]]
    return "\n".join(lines)
