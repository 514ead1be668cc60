"""Clustering evaluation of held-out titles (raw mean embeddings or through a trained head).

For each title: valid tracks, embedded (mean_embedding, through the head's ``embed`` if any),
labelled from the CSV; unlabelled tracks are counted (``n_unmatched``) and excluded. Each
method clusters the labelled tracks; metrics per title and pooled (identities and clusters
kept apart per title; pair TPR over within-title pairs).
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import torch

from training import cluster, metrics
from training.columns import BOXES, FRAME_IDX, IS_VALID, MEAN_EMBEDDING, TRACK_ID
from training.data import _fs, _vectors, shard_info
from training.labels import assign, read_labels

METRIC_KEYS = ("wcp", "nmi", "v_measure", "homogeneity", "completeness", "n_tracks",
               "n_unmatched", "n_clusters", "n_identities", "pcr", "oci", "bcubed_precision",
               "bcubed_recall", "bcubed_f1", "tpr_at_fpr_0_1")


def embed(x: np.ndarray, model=None, batch: int = 4096) -> np.ndarray:
    """(N, D) -> (N, E) float64: identity without a model, else model.embed in eval mode."""
    if model is None:
        return np.asarray(x, np.float64)
    model.eval()
    with torch.no_grad():
        outs = [model.embed(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])))
                for i in range(0, len(x), batch)]
    return torch.cat(outs).double().numpy()


def load_title(info: dict, labels, key: str, model=None, min_iou: float = 0.5) -> dict:
    """-> dict(title, emb (n, E), identity (n,), n_unmatched) for the valid tracks of a shard."""
    fs, p = _fs(info["path"])
    cols = [TRACK_ID, MEAN_EMBEDDING, IS_VALID] + ([FRAME_IDX, BOXES] if labels.level == "box" else [])
    with fs.open(p, "rb") as f:
        table = pq.read_table(f, columns=cols)
    table = table.filter(table[IS_VALID])
    ids = table[TRACK_ID].to_numpy()
    if labels.level == "box":
        who = assign(labels, key, ids, table[FRAME_IDX].to_pylist(), table[BOXES].to_pylist(), min_iou)
    else:
        who = assign(labels, key, ids)
    keep = np.array([w is not None for w in who], bool)
    x = _vectors(table[MEAN_EMBEDDING], info["dim"])[:, 0][keep]
    return dict(title=info["title_id"], emb=embed(x, model),
                identity=np.array([w for w in who if w is not None], dtype=object),
                n_unmatched=int((~keep).sum()))


def select(infos: list[dict], labels, titles) -> list[tuple[dict, str]]:
    """(shard info, label key) for each requested title (title_id or source basename)."""
    out = []
    for want in titles:
        hits = [i for i in infos if want in (i["title_id"], i["source_uri"].rstrip("/").split("/")[-1],
                                             i["source_uri"].rstrip("/").split("/")[-1].rsplit(".", 1)[0])]
        if not hits:
            raise ValueError(f"title {want!r} is in no shard")
        key = labels.key_for(hits[0]["title_id"], hits[0]["source_uri"])
        if key is None:
            raise ValueError(f"title {want!r} has no labels")
        out.append((hits[0], key))
    return out


def _threshold_from(titles: list[dict], linkage: str) -> float:
    """Median over titles of the cut height that gives each title its identity count."""
    return float(np.median([cluster.threshold_for_k(t["emb"], len(set(t["identity"])), linkage)
                            for t in titles]))


def evaluate(shards: str, titles, labels_url: str, head: str | None = None, methods=cluster.METHODS,
             linkage: str = "average", val_titles=None, min_iou: float = 0.5, log=print) -> list[dict]:
    """Records ``{"title", "method", "head", <METRIC_KEYS>}`` per title and method, then pooled."""
    from training.train import load_head

    head_name, model, loss = ("raw", None, None) if head is None else load_head(head)
    labels = read_labels(labels_url)
    infos = shard_info(shards)
    titles = titles or sorted({i["title_id"] for i in infos
                               if labels.key_for(i["title_id"], i["source_uri"])})
    data = [load_title(i, labels, k, model, min_iou) for i, k in select(infos, labels, titles)]
    val = [load_title(i, labels, k, model, min_iou) for i, k in select(infos, labels, val_titles or [])]
    records = []
    for method in methods:
        if method not in cluster.METHODS:
            raise ValueError(f"unknown method {method!r}")
        preds = []
        for j, t in enumerate(data):
            if method == "hac-k":
                c = cluster.hac_k(t["emb"], len(set(t["identity"])), linkage)
            elif method == "ap":
                c = cluster.affinity_propagation(t["emb"])
            elif head_name == "bcl":            # BCL: stop at 4b, complete linkage (methods 1.5)
                c = cluster.hac_threshold(t["emb"], loss.hac_threshold(), "complete")
            else:                               # threshold from validation titles
                ref = val or [o for i, o in enumerate(data) if i != j]
                if not ref:
                    log(f"hac-threshold skipped for {t['title']}: no validation titles")
                    c = None
                else:
                    c = cluster.hac_threshold(t["emb"], _threshold_from(ref, linkage), linkage)
            preds.append(c)
        done = [(t, c) for t, c in zip(data, preds) if c is not None]
        for t, c in done:
            records.append(_record(t["title"], method, head_name, [t], [c]))
        if done:
            records.append(_record("pooled", method, head_name, *map(list, zip(*done))))
    return records


def _record(title, method, head_name, titles: list[dict], preds: list) -> dict:
    y = np.concatenate([[f"{t['title']}/{i}" for i in t["identity"]] for t in titles])
    c = np.concatenate([[f"{t['title']}/{k}" for k in p] for t, p in zip(titles, preds)])
    groups = np.concatenate([[j] * len(t["identity"]) for j, t in enumerate(titles)])
    emb = np.concatenate([t["emb"] for t in titles])
    rec = dict(title=title, method=method, head=head_name, **metrics.clustering_scores(y, c))
    rec["n_unmatched"] = int(sum(t["n_unmatched"] for t in titles))
    rec["tpr_at_fpr_0_1"] = metrics.tpr_at_fpr(emb, y, 0.1, groups)
    return {k: rec[k] for k in ("title", "method", "head", *METRIC_KEYS)}


def format_table(records: list[dict]) -> str:
    cols = ("title", "method", "head", "n_tracks", "n_unmatched", "n_clusters", "n_identities",
            "wcp", "nmi", "v_measure", "bcubed_f1", "oci", "tpr_at_fpr_0_1")
    rows = [[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in records]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))
    return "\n".join([line(cols)] + [line(r) for r in rows])


def write_json(records: list[dict], path: str) -> None:
    import fsspec
    with fsspec.open(path, "w") as f:
        json.dump({"results": records}, f, indent=1)
