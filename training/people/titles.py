"""One title's part of ``people build`` (a Ray task each): its valid tracks clustered by the
title's own K-free method (``auto`` unless ``--method``; cannot-links always honoured), each
title cluster one *unit* for the corpus step, and the similarities between co-occurring units
(known different people) that calibrate the corpus cut.

The space people are linked in is the recogniser's (unit mean track embeddings) or, with
``--head``, the head's track embedding; the title's own clustering runs exactly as ``cluster``
runs it (same method, head and parameters)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from harvest.dataset.storage import open_fs, sha256_file
from training.clustering import methods, title_tracks
from training import registry
from training.people.link import unit
from training.people.store import Store, parquet_bytes, title_schema

EXTRA = ("timestamps", "n_faces")


def _ends(col) -> tuple[np.ndarray, np.ndarray]:
    """First and last value of each non-empty list of a list<float64> column."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if len(arr) == 0:
        return np.zeros(0), np.zeros(0)
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy(zero_copy_only=False)
    return values[offsets[:-1]], values[offsets[1:] - 1]


def unit_sums(emb: np.ndarray, labels: np.ndarray, n_units: int) -> np.ndarray:
    sums = np.zeros((n_units, emb.shape[1]), np.float64)
    np.add.at(sums, labels, unit(emb))
    return sums.astype(np.float32)


def negatives(emb: np.ndarray, labels: np.ndarray, pairs: np.ndarray, n_units: int) -> list:
    """Cosine similarities of the unit centroids of each pair of distinct units that hold
    co-occurring tracks (each unit pair once)."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    a, b = labels[pairs[:, 0]], labels[pairs[:, 1]]
    keep = a != b
    up = np.unique(np.sort(np.stack([a[keep], b[keep]], 1), axis=1), axis=0)
    if len(up) == 0:
        return []
    cent = unit(unit_sums(emb, labels, n_units))
    return [float(x) for x in (cent[up[:, 0]] * cent[up[:, 1]]).sum(1)]


def cluster_title(path: str, cfg: dict, model=None, loss=None) -> tuple[pa.Table, dict]:
    """-> (the title's state table (store.title_schema), facts: title_id, units, negatives,
    pack)."""
    tracks, table = title_tracks.read_tracks(path, columns=EXTRA)
    method = methods.get(cfg["method"])
    cut = None
    if model is not None:
        spec = registry.get(cfg["head_name"])
        emb = np.asarray(spec.embed_tracks(model, tracks), np.float32)
        if method.threshold:
            cut = spec.stop_rule(loss)
    else:
        emb = np.asarray(tracks.means, np.float32)
    emb = unit(emb)
    job = methods.Job(tracks, registry.embed_rows(None, emb), model, cut=cut,
                      params=cfg.get("params", {}))
    labels = method(job)
    conf = methods.track_confidence(job, labels)
    fps = float(tracks.meta.get("fps") or 0) or 25.0
    start, end = _ends(table["timestamps"])
    dim = emb.shape[1]
    state = pa.table([
        pa.array(tracks.track_ids, pa.int64()), pa.array(labels, pa.int32()),
        pa.array(conf, pa.float32()), pa.array(table["n_faces"].to_numpy(), pa.int64()),
        pa.array(start, pa.float64()), pa.array(end + 1.0 / fps, pa.float64()),
        pa.array([list(map(int, c)) for c in tracks.cannot_link], pa.list_(pa.int64())),
        pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), dim)],
        schema=title_schema(dim))
    n_units = int(labels.max() + 1) if len(labels) else 0
    meta = tracks.meta
    facts = dict(title_id=tracks.title_id, source_uri=meta.get("source_uri"), dim=dim,
                 n_units=n_units, n_tracks=int(len(labels)),
                 negatives=negatives(emb, labels, tracks.cannot_link_pairs(), n_units),
                 pack=dict(backend=meta.get("backend"),
                           detector_sha256=meta.get("detector_sha256"),
                           embedder_sha256=meta.get("embedder_sha256")))
    return state, facts


def process_title(info: dict, store_url: str, cfg: dict, known: dict | None) -> dict:
    """The Ray task: skip a title whose shard and config are those the store already holds
    (``known``: its entry in store.json), else cluster it and write its state file. -> facts
    (``status`` "unchanged" or "new") with the units' sums for the corpus step."""
    fs, p = open_fs(info["path"])
    sha = sha256_file(fs, p)
    if known and known.get("shard_sha256") == sha and known.get("config_hash") == cfg["hash"]:
        return dict(status="unchanged", title_id=info["title_id"])
    model = loss = None
    if cfg.get("head") is not None:
        from training.checkpoints import load_head
        cfg = dict(cfg)
        cfg["head_name"], model, loss = load_head(cfg["head"])
    state, facts = cluster_title(info["path"], cfg, model, loss)
    store = Store(store_url)
    store.write(store.title_rel(facts["title_id"]), parquet_bytes(state))
    labels = state["unit"].to_numpy()
    emb = state["embedding"].combine_chunks().flatten().to_numpy().reshape(len(labels), -1)
    facts.update(status="new", shard_sha256=sha, config_hash=cfg["hash"],
                 sums=unit_sums(emb, labels, facts["n_units"]) if len(labels) else
                 np.zeros((0, facts["dim"]), np.float32),
                 unit_tracks=np.bincount(labels, minlength=facts["n_units"]))
    return facts


def screen_seconds(state: pa.Table, rows: np.ndarray | None = None) -> float:
    """Screen time of a set of tracks: the length of the union of their time spans."""
    s, e = state["start_s"].to_numpy(), state["end_s"].to_numpy()
    if rows is not None:
        s, e = s[rows], e[rows]
    return float(sum(b - a for a, b in merge_spans(s, e)))


def merge_spans(start, end) -> list[tuple[float, float]]:
    """The union of [start, end) spans as sorted disjoint spans."""
    out: list[list[float]] = []
    for a, b in sorted(zip(map(float, start), map(float, end))):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def mask_of(state: pa.Table, track_ids) -> np.ndarray:
    return pc.is_in(state["track_id"], pa.array(list(track_ids), pa.int64())).to_numpy(
        zero_copy_only=False)
