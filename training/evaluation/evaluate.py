"""Clustering evaluation of held-out titles (raw mean embeddings or through a trained head).

For each title: valid tracks, embedded by the head's clustering rule (``registry`` entry's
``embed_tracks``; raw mean embeddings without a head), labelled from the CSV; unlabelled tracks
are counted (``n_unmatched``) and excluded. Each method (``training.clustering.methods``) clusters the
labelled tracks; metrics per title and pooled (identities and clusters
kept apart per title; pair TPR over within-title pairs).
"""
from __future__ import annotations

import json

import numpy as np

from harvest.tables import text_table
from training import registry
from training.clustering import hac
from training.clustering.methods import Job
from training.clustering.title_tracks import read_tracks
from training.clustering.methods import get as get_method
from training.columns import BOXES, FRAME_IDX
from training.data import resolve_titles, shard_info
from training.evaluation import metrics
from training.evaluation.labels import assign, read_labels
from training.registry import embed_rows, mean_track_embedding

DEFAULT_METHODS = ("auto", "hac-k", "hac-threshold", "ap")

METRIC_KEYS = ("wcp", "nmi", "v_measure", "homogeneity", "completeness", "n_tracks",
               "n_unmatched", "n_clusters", "n_identities", "pcr", "oci", "bcubed_precision",
               "bcubed_recall", "bcubed_f1", "tpr_at_fpr_0_1")


def embed(x: np.ndarray, model=None, batch: int = 4096) -> np.ndarray:
    """(N, D) -> (N, E) float64: identity without a model, else model.embed in eval mode."""
    return embed_rows(model, x, batch)


def load_title(info: dict, labels, key: str, model=None, min_iou: float = 0.5,
               embed_tracks=mean_track_embedding) -> dict:
    """-> dict(title, tracks (labelled valid tracks), emb (n, E), identity (n,), n_unmatched)
    for the valid tracks of a shard; ``embed_tracks`` is the head's clustering rule."""
    tracks, table = read_tracks(info["path"], [FRAME_IDX, BOXES] if labels.level == "box" else [])
    ids = tracks.track_ids
    if labels.level == "box":
        who = assign(labels, key, ids, table[FRAME_IDX].to_pylist(), table[BOXES].to_pylist(), min_iou)
    else:
        who = assign(labels, key, ids)
    keep = np.array([w is not None for w in who], bool)
    tracks = tracks.subset(keep)
    emb = embed_tracks(model, tracks) if model is not None else embed(tracks.means)
    return {"title": info["title_id"], "path": info["path"], "tracks": tracks, "emb": emb,
            "identity": np.array([w for w in who if w is not None], dtype=object),
            "n_unmatched": int((~keep).sum())}


class NoLabelledTitle(ValueError):
    """The titles to evaluate have no labels (a usage mistake: `evaluate` exits 2)."""


def _names(infos: list[dict]) -> str:
    """The harvested titles, as a label file may name them: source file name (title_id)."""
    import os
    shown = [f"{os.path.basename(i['source_uri'].rstrip('/'))} ({i['title_id']})"
             for i in sorted(infos, key=lambda i: i["title_id"])]
    return ", ".join(shown[:10]) + (f" and {len(shown) - 10} more" if len(shown) > 10 else "")


def labelled_titles(infos: list[dict], labels, labels_url: str) -> list[str]:
    """title_ids of the shards the labels name; none is a ``NoLabelledTitle``."""
    found = sorted({i["title_id"] for i in infos if labels.key_for(i["title_id"], i["source_uri"])})
    if not found:
        named = sorted(labels.by_title)
        raise NoLabelledTitle(
            f"no labelled title found: {labels_url} names {', '.join(named[:10]) or 'no title'}"
            f"{' ...' if len(named) > 10 else ''}; the shards hold {_names(infos)}")
    return found


def select(infos: list[dict], labels, titles) -> list[tuple[dict, str]]:
    """(shard info, label key) for each requested title (title_id or source file name)."""
    out = []
    for info in resolve_titles(infos, titles):
        key = labels.key_for(info["title_id"], info["source_uri"])
        if key is None:
            raise NoLabelledTitle(f"title {info['title_id']!r} has no labels (the label file "
                                  f"names {', '.join(sorted(labels.by_title)[:10])})")
        out.append((info, key))
    return out


def _threshold_from(titles: list[dict], linkage: str) -> float:
    """Median over titles of the cut height that gives each title its identity count."""
    return float(np.median([hac.threshold_for_k(t["emb"], len(set(t["identity"])), linkage)
                            for t in titles]))


def evaluate(shards: str, titles, labels_url: str, head: str | None = None,
             methods=DEFAULT_METHODS, linkage: str = "average", val_titles=None,
             min_iou: float = 0.5, cannot_link: bool = False, known_k: bool = False,
             log=print, report: str | None = None, params: dict | None = None) -> list[dict]:
    """Records ``{"title", "method", "head", <METRIC_KEYS>}`` per title and method, then pooled.

    ``methods``: names in :mod:`training.clustering.methods`. K (the title's identity count) goes to
    methods that need it, and to those that take it optionally only with ``known_k``;
    ``cannot_link`` turns on cannot-link HAC for the methods that offer it. ``hac-threshold``
    uses the head's own stopping rule (BCL) if it has one, else a height fitted on
    ``val_titles`` (else leave-one-title-out) to match their identity counts. ``report``: a
    directory/URL where the predicted clusters are drawn as galleries (``harvest.reports.galleries``)."""
    from training.checkpoints import load_head

    methods = [get_method(m) for m in methods]
    labels = read_labels(labels_url)
    infos = shard_info(shards)
    chosen = select(infos, labels, titles or labelled_titles(infos, labels, labels_url))
    val_chosen = select(infos, labels, val_titles or [])
    head_name, model, loss = ("raw", None, None) if head is None else load_head(head)
    spec = registry.get(head_name) if model is not None else None
    rule = spec.embed_tracks if spec else mean_track_embedding
    data = [load_title(i, labels, k, model, min_iou, rule) for i, k in chosen]
    val = [load_title(i, labels, k, model, min_iou, rule) for i, k in val_chosen]
    own_cut = spec.stop_rule(loss) if spec and spec.stop_rule else None
    records, drawn = [], []
    for method in methods:
        preds = []
        for j, t in enumerate(data):
            cut = None
            if method.threshold:
                ref = val or [o for i, o in enumerate(data) if i != j]
                if own_cut:
                    cut = own_cut
                elif ref:
                    cut = (_threshold_from(ref, linkage), linkage)
                else:
                    log(f"{method.name} skipped for {t['title']}: no validation titles")
                    preds.append(None)
                    continue
            k = len(set(t["identity"])) if method.k == "required" or known_k else None
            job = Job(t["tracks"], t["emb"], model, k=k, cut=cut, linkage=linkage,
                      cannot_link=cannot_link and method.cannot_link == "option",
                      params=method.own(params))
            preds.append(method(job) + 1)
        done = [(t, c) for t, c in zip(data, preds) if c is not None]
        for t, c in done:
            records.append(_record(t["title"], method.name, head_name, [t], [c]))
            drawn.append({"title": t["title"], "path": t["path"], "method": method.name,
                          "pred": c, "track_ids": t["tracks"].track_ids,
                          "identity": t["identity"]})
        if done:
            records.append(_record("pooled", method.name, head_name, *map(list, zip(*done))))
    if report:
        from harvest.reports.galleries import evaluation_report
        log(f"report: {evaluation_report(report, drawn, records)}")
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


TABLE_COLUMNS = ("title", "method", "head", "n_tracks", "n_unmatched", "n_clusters",
                 "n_identities", "wcp", "nmi", "v_measure", "bcubed_f1", "pcr", "oci",
                 "tpr_at_fpr_0_1")


def format_table(records: list[dict]) -> str:
    """The console table: one line per record, the metrics of ``TABLE_COLUMNS``."""
    cols = TABLE_COLUMNS
    rows = [[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in records]
    return text_table([cols, *rows], right=True)


def write_json(records: list[dict], path: str) -> None:
    import fsspec
    with fsspec.open(path, "w") as f:
        json.dump({"results": records}, f, indent=1)
