"""``people remove``: take a person out of the harvest and out of the people store.

The person is given by id, by name, or by a photo and a similarity threshold: then every
person whose prototype is within the threshold goes, and with them every other track within
the threshold of the photo, so no remaining track of the corpus is that close to it. The
harvest is rewritten by :func:`harvest.dataset.takedown.remove_tracks` (new shard versions without the
tracks, cannot-links and hard negatives of the remaining tracks made consistent, manifest and
card updated, an audit line); the store then drops the same tracks from its state, keeps the
new shards' sha256 (so the next build does not re-cluster those titles) and re-renders.
"""
from __future__ import annotations

import posixpath

import numpy as np

from harvest.dataset.storage import open_fs, sha256_file
from training.people.build import render
from training.people.corrections import current_people, find_person, tracks_of
from training.people.search import photo_query, rank_people
from training.people.store import UNITS_FILE, Store, StoreError, vectors
from training.people.titles import mask_of, unit_sums


def harvest_root(shards: str) -> str:
    """The harvest output a ``--shards`` URL belongs to (``OUT`` or ``OUT/shards``)."""
    from harvest.dataset.storage import SHARDS_DIR
    url = shards.rstrip("/")
    return url[: -len(SHARDS_DIR) - 1] if posixpath.basename(url) == SHARDS_DIR else url


def tracks_near(store: Store, hdr: dict, q: np.ndarray, threshold: float) -> dict:
    out = {}
    for tid in sorted(hdr["titles"]):
        st = store.title_state(tid, ["track_id", "embedding"])
        sims = vectors(st["embedding"], hdr["dim"]) @ q
        ids = st["track_id"].to_numpy()[sims >= threshold]
        if len(ids):
            out[tid] = sorted(int(i) for i in ids)
    return out


def select(store: Store, hdr: dict, person: str | None, photo: str | None,
           threshold: float | None, models: str | None) -> tuple[list[int], dict]:
    """-> (persons removed, title -> track ids to remove)."""
    if person is not None:
        p = find_person(current_people(store), person)
        return [p], tracks_of(store, p)
    if threshold is None:
        raise StoreError("--photo needs --threshold (a cosine similarity, e.g. 0.5)")
    q = photo_query(hdr, photo, models)
    persons = [r["person_id"] for r in rank_people(store, hdr, q, 1 << 30)
               if r["similarity"] >= threshold]
    tracks = tracks_near(store, hdr, q, threshold)
    for p in persons:
        for tid, ids in tracks_of(store, p).items():
            tracks[tid] = sorted(set(tracks.get(tid, [])) | set(ids))
    return persons, tracks


def drop_from_state(store: Store, hdr: dict, tid: str, ids: list[int]) -> None:
    """Remove tracks from one title's state and its units' sums."""
    import pyarrow as pa
    import pyarrow.compute as pc
    st = store.title_state(tid)
    st = st.filter(pc.invert(pa.array(mask_of(st, ids))))
    gone = set(ids)
    links = [[x for x in c if x not in gone] for c in st["cannot_link"].to_pylist()]
    st = st.set_column(st.schema.get_field_index("cannot_link"), "cannot_link",
                       pa.array(links, pa.list_(pa.int64())))
    store.write_table(store.title_rel(tid), st)
    units = store.units()
    labels = st["unit"].to_numpy()
    n_units = int(units.filter(pc.equal(units["title_id"], tid))["unit"].to_numpy().max() + 1) \
        if len(units) else 0
    sums = unit_sums(vectors(st["embedding"], hdr["dim"]), labels, n_units)
    counts = np.bincount(labels, minlength=n_units)
    rows = units.to_pylist()
    keep = []
    for r in rows:
        if r["title_id"] == tid:
            if counts[r["unit"]] == 0:
                continue
            r["n_tracks"], r["sum"] = int(counts[r["unit"]]), sums[r["unit"]].tolist()
        keep.append(r)
    store.write_table(UNITS_FILE, pa.Table.from_pylist(keep, schema=units.schema))
    hdr["titles"][tid]["n_tracks"] = st.num_rows


def remove(store_url: str, shards: str, person: str | None = None, photo: str | None = None,
           threshold: float | None = None, models: str | None = None,
           reason: str = "takedown request", request_id: str | None = None) -> dict:
    from harvest.dataset.storage import shard_path
    from harvest.dataset.takedown import remove_tracks
    store = Store(store_url)
    hdr = store.header()
    persons, tracks = select(store, hdr, person, photo, threshold, models)
    if not tracks:
        raise StoreError("nothing to remove: no person or track matched")
    held = {p: sum(len(v) for v in tracks_of(store, p).values()) for p in persons}
    root = harvest_root(shards)
    summary = remove_tracks(root, {t: set(ids) for t, ids in tracks.items()}, reason,
                            request_id)
    for tid, ids in tracks.items():
        drop_from_state(store, hdr, tid, ids)
        hdr["titles"][tid]["shard_sha256"] = sha256_file(*open_fs(shard_path(root, tid)))
    for p in persons:
        store.add_correction(dict(op="remove", person=p, request_id=request_id, tracks=held[p]))
    render(store, hdr)
    store.write_header(hdr)
    return dict(persons=persons, titles=len(tracks),
                tracks=sum(len(v) for v in tracks.values()), harvest=summary)
