"""``people build`` and the rendering every ``people`` command shares.

A build (1) runs one Ray task per title of ``--shards`` (:func:`titles.process_title`: titles
whose shard and config the store already holds are skipped by sha256), (2) calibrates the
corpus cut on every title's co-occurring clusters, (3) links the new titles' clusters onto the
existing people and groups the rest into new people (:mod:`training.people.link`), then
(4) renders the outputs with the corrections laid over the links (:func:`render`). Existing
people keep their ids: links already made are never revisited; a title whose shard changed
is re-clustered and re-linked. Titles absent from ``--shards`` stay in the store.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

from training.people import link as corpus
from training.people.corrections import overlay
from training.people.store import (ASSIGN_SCHEMA, FORMAT, PEOPLE_FILE, PEOPLE_SCHEMA,
                                   UNITS_FILE, Store, StoreError, units_schema, vectors)
from training.people.titles import mask_of, merge_spans

NEGATIVES_FILE = "state/negatives.parquet"


def make_config(method: str, head: str | None, params: dict | None) -> dict:
    """The settings people depend on: the title method (as ``cluster`` takes it), the head by
    content, the link parameters; ``hash`` over all but the head's path."""
    from training.clustering.cluster_titles import make_config as title_config
    cfg = title_config(method, head, False, params)
    cfg["link"] = {**corpus.DEFAULTS, **{k: v for k, v in (params or {}).items()
                                         if k in corpus.DEFAULTS}}
    stable = {k: v for k, v in cfg.items() if k != "head"}
    cfg["hash"] = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]
    return cfg


def new_header(cfg: dict) -> dict:
    return dict(format=FORMAT, config={k: v for k, v in cfg.items() if k != "head"},
                head=cfg.get("head"), pack=None, tau=None, n_negatives=0, next_person_id=0,
                titles={})


def run_titles(infos: list[dict], store: Store, cfg: dict, known: dict, log=print) -> list:
    """One Ray task per title (``cluster``'s :func:`map_titles`); -> their facts (failed
    titles: ``status`` failed, ``error``)."""
    from training.clustering.cluster_titles import map_titles

    def done(r: dict) -> str:
        return f" ({r['n_tracks']} tracks, {r['n_units']} clusters)" if r["status"] == "new" \
            else ""
    return [dict(r) for r in map_titles(_task, infos, (store.url, cfg, known), "people", done,
                                        log)] if infos else []


def _task(info: dict, store_url: str, cfg: dict, known: dict) -> dict:
    from training.people.titles import process_title
    return process_title(info, store_url, cfg, known.get(info["title_id"]))


def _check_pack(head: dict, r: dict) -> None:
    if head["pack"] is None:
        head["pack"] = r["pack"]
    elif r["pack"] != head["pack"]:
        raise StoreError(f"title {r['title_id']} was harvested with embedder "
                         f"{r['pack']['embedder_sha256']}, the store's people with "
                         f"{head['pack']['embedder_sha256']}: their faces cannot be compared")


def _units_table(rows: list[tuple], dim: int) -> pa.Table:
    """rows: (title_id, unit, person_id, similarity, n_tracks, sum)."""
    cols = list(zip(*rows)) if rows else [[] for _ in range(6)]
    sums = np.asarray(cols[5], np.float32).reshape(-1, dim)
    return pa.table([pa.array(cols[0], pa.string()), pa.array(cols[1], pa.int32()),
                     pa.array(cols[2], pa.int64()), pa.array(cols[3], pa.float32()),
                     pa.array(cols[4], pa.int64()),
                     pa.FixedSizeListArray.from_arrays(pa.array(sums.ravel(), pa.float32()),
                                                       dim)], schema=units_schema(dim))


def _old_units(store: Store, drop: set) -> list[tuple]:
    t = store.units()
    if t is None:
        return []
    keep = [i for i, tid in enumerate(t["title_id"].to_pylist()) if tid not in drop]
    t = t.take(keep)
    sums = vectors(t["sum"], t.schema.field("sum").type.list_size)
    return [(a, b, c, d, e, s) for a, b, c, d, e, s in zip(
        t["title_id"].to_pylist(), t["unit"].to_pylist(), t["person_id"].to_pylist(),
        t["similarity"].to_pylist(), t["n_tracks"].to_pylist(), sums)]


def prototypes(store: Store, rows: list[tuple], ov, dim: int):
    """The people as linked and corrected: -> (person ids, (P, D) sums, per person the title
    ids it holds). Pinned tracks move from their cluster's person to their pinned one."""
    sums: dict[int, np.ndarray] = {}
    titles: dict[int, set] = {}
    for tid, _, pid, _, _, s in rows:
        p = ov.resolve(pid)
        sums[p] = sums.get(p, 0) + np.asarray(s, np.float64)
        titles.setdefault(p, set()).add(tid)
    by_title: dict[str, dict] = {}
    for (tid, track), target in ov.pinned.items():
        by_title.setdefault(tid, {})[track] = target
    linked = {(tid, u): ov.resolve(pid) for tid, u, pid, _, _, _ in rows}
    for tid, pins in by_title.items():
        if not any(t == tid for t, _ in linked):
            continue
        st = store.title_state(tid, ["track_id", "unit", "embedding"])
        m = mask_of(st, pins)
        emb = vectors(st["embedding"], dim)[m]
        for track, u, e in zip(st["track_id"].to_numpy()[m], st["unit"].to_numpy()[m], emb):
            src, (dst, _) = linked.get((tid, int(u))), pins[int(track)]
            if src is not None:
                sums[src] = sums[src] - corpus.unit(e)
            if dst is not None:
                sums[dst] = sums.get(dst, 0) + corpus.unit(e)
                titles.setdefault(dst, set()).add(tid)
    ids = sorted(p for p in sums if p not in ov.removed)
    mat = np.asarray([sums[p] for p in ids], np.float32).reshape(len(ids), dim)
    return ids, mat, [titles[p] for p in ids]


def title_assignments(st: pa.Table, tid: str, linked: dict, ov) -> pa.Table:
    """One title's assignment table from its state ``st`` (track_id, unit, confidence): each
    valid track's person (links, then corrections)."""
    track_ids, units = st["track_id"].to_numpy(), st["unit"].to_numpy()
    person, status, sim = [], [], []
    for track, u in zip(track_ids.tolist(), units.tolist()):
        pid, s = linked.get((tid, u), (None, 0.0))
        pin = ov.pinned.get((tid, track))
        p, stt = (pin[0], pin[1]) if pin else (ov.resolve(pid) if pid is not None else None,
                                               "linked")
        if p in ov.removed:
            p, stt = None, "unknown"
        person.append(p)
        status.append(stt)
        sim.append(s if stt == "linked" else 0.0)
    return pa.table([pa.array([tid] * len(track_ids), pa.string()),
                     pa.array(track_ids, pa.int64()), pa.array(person, pa.int64()),
                     pa.array(status, pa.string()), st["confidence"].combine_chunks(),
                     pa.array(sim, pa.float32())], schema=ASSIGN_SCHEMA)


def render(store: Store, head: dict) -> dict:
    """Write ``assignments/`` and ``people.parquet`` from the links and the corrections (only
    files whose bytes change). -> counts."""
    ov = overlay(store.corrections())
    units = store.units()
    linked = {}
    if units is not None:
        for tid, u, pid, s in zip(units["title_id"].to_pylist(), units["unit"].to_pylist(),
                                  units["person_id"].to_pylist(), units["similarity"].to_pylist()):
            linked[(tid, u)] = (pid, s)
    agg: dict[int, dict] = {}
    for tid in sorted(head["titles"]):
        st = store.title_state(tid, ["track_id", "unit", "confidence", "start_s", "end_s"])
        table = title_assignments(st, tid, linked, ov)
        store.write_table(store.assign_rel(tid), table)
        start, end = st["start_s"].to_numpy(), st["end_s"].to_numpy()
        person = table["person_id"].to_numpy(zero_copy_only=False)
        named = np.flatnonzero(~np.isnan(person)) if person.dtype.kind == "f" else \
            np.arange(len(person))
        order = named[np.argsort(person[named], kind="stable")]    # rows grouped by person
        cuts = np.flatnonzero(np.diff(person[order])) + 1
        for rows in np.split(order, cuts) if len(order) else []:
            p = int(person[rows[0]])
            a = agg.setdefault(p, dict(n=0, titles=[], seconds=0.0))
            a["n"] += len(rows)
            a["titles"].append(tid)
            a["seconds"] += sum(b - x for x, b in merge_spans(start[rows], end[rows]))
    for rel in store.fs.ls(store.path("assignments"), detail=False) \
            if store.fs.exists(store.path("assignments")) else []:
        if rel.rsplit("/", 1)[-1][:-len(".parquet")] not in head["titles"]:
            store.fs.rm(rel)
    ids = sorted(agg)
    people = pa.table([pa.array(ids, pa.int64()), pa.array([ov.names.get(p) for p in ids],
                                                            pa.string()),
                       pa.array([agg[p]["n"] for p in ids], pa.int64()),
                       pa.array([len(agg[p]["titles"]) for p in ids], pa.int64()),
                       pa.array([agg[p]["titles"] for p in ids], pa.list_(pa.string())),
                       pa.array([round(agg[p]["seconds"], 3) for p in ids], pa.float64())],
                      schema=PEOPLE_SCHEMA)
    store.write_table(PEOPLE_FILE, people)
    return dict(people=len(ids), titles=len(head["titles"]),
                tracks=int(sum(a["n"] for a in agg.values())))


def calibrate(store: Store, head: dict, new: list[dict], link_params: dict) -> float:
    """The corpus cut from every title's negatives (kept in state/negatives.parquet)."""
    old = store.read_table(NEGATIVES_FILE)
    drop = {r["title_id"] for r in new}
    tids, sims = [], []
    if old is not None:
        for t, s in zip(old["title_id"].to_pylist(), old["similarity"].to_pylist()):
            if t not in drop and t in head["titles"]:
                tids.append(t)
                sims.append(s)
    for r in new:
        tids += [r["title_id"]] * len(r["negatives"])
        sims += r["negatives"]
    order = sorted(range(len(tids)), key=lambda i: (tids[i], sims[i]))
    store.write_table(NEGATIVES_FILE, pa.table(
        {"title_id": pa.array([tids[i] for i in order], pa.string()),
         "similarity": pa.array([sims[i] for i in order], pa.float32())}))
    head["n_negatives"] = len(sims)
    return corpus.calibrate(np.asarray(sims, np.float32), **link_params)


def link_new(store: Store, head: dict, new: list[dict], tau: float) -> int:
    """Link the new titles' clusters; rewrite state/units.parquet. -> new people."""
    dim = head["dim"]
    ov = overlay(store.corrections())
    rows = _old_units(store, {r["title_id"] for r in new})
    ids, sums, titles = prototypes(store, rows, ov, dim)
    codes = {t: i for i, t in enumerate(sorted(head["titles"]))}
    units = corpus.Units(np.concatenate([r["sums"] for r in new]).reshape(-1, dim)
                         if new else np.zeros((0, dim), np.float32),
                         np.concatenate([r["unit_tracks"] for r in new]).astype(np.int64)
                         if new else np.zeros(0, np.int64),
                         np.concatenate([[codes[r["title_id"]]] * r["n_units"] for r in new])
                         .astype(np.int64) if new else np.zeros(0, np.int64))
    got, sims, n_new = corpus.link(sums, [{codes[t] for t in ts} for ts in titles], units, tau,
                                   **head["config"]["link"])
    first = head["next_person_id"]
    person = [ids[g] if g < len(ids) else first + g - len(ids) for g in got.tolist()]
    head["next_person_id"] = first + n_new
    k = 0
    for r in new:
        for u in range(r["n_units"]):
            rows.append((r["title_id"], u, person[k], float(sims[k]),
                         int(r["unit_tracks"][u]), r["sums"][u]))
            k += 1
    rows.sort(key=lambda x: (x[0], x[1]))
    store.write_table(UNITS_FILE, _units_table(rows, dim))
    return n_new


def build(shards: str, store_url: str, head: str | None = None, method: str = "auto",
          params: dict | None = None, titles=None, log=print) -> dict:
    """``people build``: module doc. -> summary (titles new / unchanged / failed, people)."""
    from training.data import resolve_titles, shard_info
    cfg = make_config(method, head, params)
    store = Store(store_url)
    hdr = store.header() if store.exists() else new_header(cfg)
    if hdr["config"]["hash"] != cfg["hash"]:
        raise StoreError(f"{store_url} holds people built with method "
                         f"{hdr['config']['method']!r}, head sha256 "
                         f"{hdr['config']['head_sha256']}; these settings give other "
                         "embeddings: build into a new --output")
    infos = shard_info(shards)
    infos = resolve_titles(infos, titles) if titles else infos
    results = run_titles(infos, store, cfg, hdr["titles"], log)
    new, failed = [], [r for r in results if r["status"] == "failed"]
    for r in (r for r in results if r["status"] == "new"):
        try:
            _check_pack(hdr, r)
        except StoreError as e:
            failed.append(dict(title_id=r["title_id"], status="failed", error=str(e)))
            continue
        hdr.setdefault("dim", r["dim"])
        hdr["titles"][r["title_id"]] = dict(shard_sha256=r["shard_sha256"],
                                            config_hash=r["config_hash"],
                                            source_uri=r["source_uri"], n_tracks=r["n_tracks"])
        new.append(r)
    n_new = 0
    if new:
        hdr["tau"] = round(calibrate(store, hdr, new, hdr["config"]["link"]), 6)
        n_new = link_new(store, hdr, new, hdr["tau"])
    counts = render(store, hdr) if hdr["titles"] else dict(people=0, titles=0, tracks=0)
    store.write_header(hdr)
    return dict(new_titles=len(new), unchanged=sum(r["status"] == "unchanged" for r in results),
                failed=failed, new_people=n_new, tau=hdr["tau"], **counts)
