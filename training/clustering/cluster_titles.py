"""``cluster``: label the valid tracks of every title with person ids, no labels, K or threshold.

One Ray task per title (local Ray unless the job runs on a cluster). Each task reads its shard,
embeds the tracks (the head's clustering rule, raw mean embeddings without a head), runs a
parameter-free method from :mod:`training.clustering.methods` (default :data:`DEFAULT_METHOD`) and writes
``OUTPUT/<title_id>.parquet`` atomically (``harvest.dataset.storage.write_atomic``):

    title_id    string
    track_id    int64     every valid track of the title, exactly once
    cluster_id  int32     0..C-1, numbered by cluster size (0 = largest), ties by first track
    confidence  float32   calibrated probability that the track is with the right person
                          (training/clustering/confidence.py; calibrated on labelled real footage)

File metadata key ``movieface_cluster`` (JSON): title_id, source_uri, shard_sha256, config
(method, its defaults, head checkpoint and its sha256, cannot_link), config_hash, n_tracks,
n_clusters, cluster_sizes (list indexed by cluster_id). A re-run skips a title whose output
has the same shard sha256 and config hash (the task hashes the shard and reads the footer).
"""
from __future__ import annotations

import hashlib
import io
import json
import posixpath
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harvest.dataset.storage import open_fs, sha256_file, write_atomic
from training.clustering import methods, title_tracks
from training import registry
from training.data import resolve_titles, shard_info

DEFAULT_METHOD = "auto"
META_KEY = b"movieface_cluster"
VERSION = 2            # 2: calibrated confidence, `auto` the default
SCHEMA = pa.schema([pa.field("title_id", pa.string(), nullable=False),
                    pa.field("track_id", pa.int64(), nullable=False),
                    pa.field("cluster_id", pa.int32(), nullable=False),
                    pa.field("confidence", pa.float32(), nullable=False)])


def output_path(output: str, title_id: str) -> str:
    return posixpath.join(output.rstrip("/"), f"{title_id}.parquet")


def make_config(method: str, head: str | None = None, cannot_link: bool = False,
                params: dict | None = None) -> dict:
    """The settings a title's labels depend on, with the head's checkpoint sha256."""
    m = methods.get(method)
    if m.threshold and head is not None and m.k != "required":
        from training.checkpoints import load_head
        if registry.get(load_head(head)[0]).stop_rule is not None:
            m = None                                    # the head's own cut (BCL: 4b)
    if m is not None and not m.parameter_free:
        raise ValueError(f"{method} needs "
                         f"{'K' if m.k == 'required' else 'a threshold'}; cluster takes none: "
                         f"use {sorted(n for n, x in methods.METHODS.items() if x.parameter_free)}"
                         f" (or hac-threshold with a head that has its own cut, e.g. bcl)")
    m = methods.get(method)
    cfg = dict(version=VERSION, method=method, defaults=m.defaults, head=None, head_sha256=None,
               cannot_link=bool(cannot_link and m.cannot_link == "option"))
    if m.own(params):                   # --param overrides (absent: the hash is unchanged)
        cfg["params"] = m.own(params)
    if head is not None:
        from training.checkpoints import STATE_FILE, resolve_head
        path = resolve_head(head)
        fs, p = open_fs(path)
        f = p.rstrip("/") + "/" + STATE_FILE if fs.isdir(p) else p
        cfg["head"], cfg["head_sha256"] = path, sha256_file(fs, f)
    return cfg


def config_hash(cfg: dict) -> str:
    stable = {k: v for k, v in cfg.items() if k != "head"}     # the checkpoint by content
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def read_meta(path: str) -> dict | None:
    """The ``movieface_cluster`` metadata of an output file, None if there is none."""
    fs, p = open_fs(path)
    if not fs.exists(p):
        return None
    try:
        with fs.open(p, "rb") as f:
            meta = pq.ParquetFile(f).schema_arrow.metadata or {}
        return json.loads(meta[META_KEY])
    except Exception:           # unreadable or foreign file: redo the title
        return None


def label_title(info: dict, cfg: dict, model=None, loss=None) -> tuple[pa.Table, dict]:
    """-> (output table, metadata) of one title's valid tracks."""
    tracks, _ = title_tracks.read_tracks(info["path"])
    method = methods.get(cfg["method"])
    cut = None
    if model is not None:
        spec = registry.get(cfg["head_name"])
        emb = spec.embed_tracks(model, tracks)
        if method.threshold:
            cut = spec.stop_rule(loss)
    else:
        emb = registry.embed_rows(None, tracks.means)
    job = methods.Job(tracks, emb, model, cut=cut, cannot_link=cfg["cannot_link"],
                      params=cfg.get("params", {}))
    labels = method(job)
    conf = methods.track_confidence(job, labels)
    sizes = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
    first = np.full(len(sizes), len(labels))
    np.minimum.at(first, labels, np.arange(len(labels)))
    order = np.lexsort((first, -sizes)).tolist()
    rank = np.empty(len(sizes), np.int64)
    rank[order] = np.arange(len(sizes))
    labels = rank[labels] if len(labels) else labels
    table = pa.table([pa.array([info["title_id"]] * len(labels), pa.string()),
                      pa.array(tracks.track_ids, pa.int64()), pa.array(labels, pa.int32()),
                      pa.array(conf, pa.float32())], schema=SCHEMA)
    meta = dict(title_id=info["title_id"], source_uri=info["source_uri"],
                n_tracks=int(len(labels)), n_clusters=int(len(sizes)),
                cluster_sizes=[int(sizes[c]) for c in order])
    return table, meta


def cluster_one(info: dict, output: str, cfg: dict) -> dict:
    """One title: skip when done with the same shard and config, else label and write."""
    t0 = time.perf_counter()
    fs, p = open_fs(info["path"])
    shard_sha = sha256_file(fs, p)          # streamed: a shard can be large
    h = config_hash(cfg)
    out = output_path(output, info["title_id"])
    old = read_meta(out)
    if old and old.get("shard_sha256") == shard_sha and old.get("config_hash") == h:
        return dict(title_id=info["title_id"], status="skipped", n_tracks=old["n_tracks"],
                    n_clusters=old["n_clusters"], seconds=time.perf_counter() - t0)
    model = loss = None
    if cfg["head"] is not None:
        from training.checkpoints import load_head
        cfg = dict(cfg)
        cfg["head_name"], model, loss = load_head(cfg["head"])
    table, meta = label_title(info, cfg, model, loss)
    meta.update(shard_sha256=shard_sha, config={k: v for k, v in cfg.items() if k != "head_name"},
                config_hash=h)
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    ofs, op = open_fs(out)
    write_atomic(ofs, op, buf.getvalue())
    return dict(title_id=info["title_id"], status="done", n_tracks=meta["n_tracks"],
                n_clusters=meta["n_clusters"], seconds=time.perf_counter() - t0)


def write_report(shards: str, output: str, report: str, titles=None) -> str:
    """HTML galleries (``harvest.reports.galleries.cluster_report``) of the titles of ``shards`` that
    have an output file; -> URL of the report's index.html."""
    from harvest.reports.galleries import cluster_report
    infos = resolve_titles(shard_info(shards), titles) if titles else shard_info(shards)
    items = []
    for info in infos:
        meta = read_meta(output_path(output, info["title_id"]))
        if meta is None:
            continue
        fs, p = open_fs(output_path(output, info["title_id"]))
        with fs.open(p, "rb") as f:
            t = pq.read_table(f)
        items.append(dict(title=info["title_id"], path=info["path"],
                          method=meta["config"]["method"],
                          track_ids=t["track_id"].to_numpy(), cluster_id=t["cluster_id"].to_numpy(),
                          confidence=t["confidence"].to_numpy()))
    return cluster_report(report, items)


def run(shards: str, output: str, head: str | None = None, method: str = DEFAULT_METHOD,
        titles=None, cannot_link: bool = False, log=print,
        params: dict | None = None) -> list[dict]:
    """Cluster every title of ``shards`` (or ``titles``: ids or file names), one Ray task each;
    -> one result dict per title (``status`` done / skipped / failed with ``error``);
    ``params`` override the method's defaults (``--param``)."""
    cfg = make_config(method, head, cannot_link, params)
    infos = shard_info(shards)
    if titles:
        infos = resolve_titles(infos, titles)

    def done(r: dict) -> str:
        return f" ({r['n_tracks']} tracks -> {r['n_clusters']} clusters, {r['seconds']:.1f}s)"
    return map_titles(cluster_one, infos, (output, cfg), "cluster", done, log)


def map_titles(fn, infos: list[dict], args: tuple, name: str, describe, log=print) -> list[dict]:
    """``fn(info, *args)`` for every title, one Ray task each (1 CPU, one retry of a system
    failure), collected as they finish; a title whose task raises is a ``failed`` row with its
    error and the others go on. ``describe(result)`` ends each title's log line.
    -> results sorted by title_id (``cluster`` and ``people build`` run their titles so)."""
    import ray
    task = ray.remote(num_cpus=1, max_retries=1)(fn)
    pending = {task.remote(i, *args): i["title_id"] for i in infos}
    results = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        title = pending.pop(ready[0])
        try:
            r = ray.get(ready[0])
        except Exception as e:          # one title's failure does not stop the others
            r = dict(title_id=title, status="failed", error=f"{type(e).__name__}: {e}")
        results.append(r)
        log(f"[{name}] {len(results)}/{len(infos)} {title}: {r['status']}"
            + (f" {r['error']}" if r["status"] == "failed" else describe(r)))
    return sorted(results, key=lambda r: r["title_id"])
