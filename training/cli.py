"""Console entry points ``train`` and ``evaluate`` (also run by ``jobs/*.py`` under
``ray job submit --working-dir . -- python jobs/train.py ...``)."""
from __future__ import annotations

import argparse
import sys

from training import cluster, methods, registry
from training.evaluate import DEFAULT_METHODS


PARAM_HELP = ("method parameters over their defaults (JSON values), e.g. vcn's models=DIR "
              "device=cuda steps=4; the names are in training/methods.py")
HEAD_HELP = ("a trained head: a `train` run directory (--output/NAME: its best checkpoint), "
             "a checkpoint directory, or the published BCL file")


def _ray_init():
    import ray
    if not ray.is_initialized():
        ray.init()   # joins the job's cluster under `ray job submit`, else starts a local one


def train_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="train", description="Fit an adaptation head with Ray Train.")
    p.add_argument("--head", required=True, choices=sorted(registry.HEADS))
    p.add_argument("--shards", required=True, help="directory/URL of harvested Parquet shards")
    p.add_argument("--output", required=True, help="Ray Train storage path (local or URL)")
    p.add_argument("--name", help="run name under --output (default: the head); reusing it resumes")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--val-titles", nargs="+",
                   help="validation titles, title_id or file name (default: hashed fraction)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--epochs", type=int, help="maximum epochs (default 100; early stopping)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--labels", help="identity CSV: BCL trains in supervised mode on these tracks")
    p.add_argument("--max-failures", type=int, default=0,
                   help="worker-group restarts from the last checkpoint after a worker dies")
    args = p.parse_args(argv)
    _ray_init()
    from training.train import fit
    identities = _track_identities(args.shards, args.labels) if args.labels else None
    from ray.train import TrainingFailedError
    try:
        result = fit(args.head, args.shards, args.output, workers=args.workers, gpu=args.gpu,
                     val_titles=args.val_titles, val_fraction=args.val_fraction, name=args.name,
                     identities=identities, max_failures=args.max_failures, epochs=args.epochs,
                     batch_size=args.batch_size, lr=args.lr)
    except TrainingFailedError as e:
        result = e
    if getattr(result, "error", None) or isinstance(result, Exception):
        print(f"training failed: {getattr(result, 'error', None) or result}", file=sys.stderr)
        return 1
    print(f"final metrics: {result.metrics}")
    best = min(result.best_checkpoints, key=lambda cm: cm[1]["val_loss"], default=None)
    if best:
        print(f"best checkpoint (val_loss {best[1]['val_loss']:.5f}): {best[0].path}")
    return 0


def _track_identities(shards: str, labels_url: str) -> dict:
    """(title_id, track_id) -> identity for every valid labelled track of the shards."""
    import numpy as np
    import pyarrow.parquet as pq

    from training.columns import BOXES, FRAME_IDX, TRACK_ID
    from training.data import _fs, shard_info
    from training.labels import assign, read_labels
    labels, out = read_labels(labels_url), {}
    for info in shard_info(shards):
        key = labels.key_for(info["title_id"], info["source_uri"])
        if key is None:
            continue
        fs, p = _fs(info["path"])
        with fs.open(p, "rb") as f:
            t = pq.read_table(f, columns=[TRACK_ID, FRAME_IDX, BOXES])
        ids = t[TRACK_ID].to_numpy()
        who = assign(labels, key, ids, t[FRAME_IDX].to_pylist(), t[BOXES].to_pylist()) \
            if labels.level == "box" else assign(labels, key, ids)
        out.update({(info["title_id"], int(i)): w for i, w in zip(np.asarray(ids), who) if w})
    return out


def evaluate_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="evaluate", description="Cluster held-out titles and score.")
    p.add_argument("--shards", required=True)
    p.add_argument("--titles", nargs="+",
                   help="titles to evaluate, title_id or file name (default: all labelled)")
    p.add_argument("--labels", required=True, help="track- or box-level identity CSV")
    p.add_argument("--head", help=HEAD_HELP)
    p.add_argument("--method", nargs="+", default=list(DEFAULT_METHODS), choices=sorted(methods.METHODS))
    p.add_argument("--cannot-link", action="store_true",
                   help="HAC methods never join two tracks that share a frame")
    p.add_argument("--known-k", action="store_true",
                   help="finch/c1c stop at the title's identity count (default: parameter-free)")
    p.add_argument("--linkage", default="average", choices=cluster.LINKAGES,
                   help="HAC linkage (BCL's hac-threshold always uses complete)")
    p.add_argument("--val-titles", nargs="+",
                   help="titles that set the hac-threshold cut (default: leave-one-title-out)")
    p.add_argument("--json", help="write {'results': [...]} here")
    p.add_argument("--param", nargs="+", metavar="KEY=VALUE", help=PARAM_HELP)
    p.add_argument("--report", help="directory/URL: HTML galleries of the predicted clusters")
    args = p.parse_args(argv)
    from training.evaluate import evaluate, format_table, write_json
    records = evaluate(args.shards, args.titles, args.labels, head=args.head, methods=args.method,
                       linkage=args.linkage, val_titles=args.val_titles,
                       cannot_link=args.cannot_link, known_k=args.known_k, report=args.report,
                       params=methods.parse_params(args.param))
    print(format_table(records))
    if args.json:
        write_json(records, args.json)
    return 0


def cluster_main(argv=None) -> int:
    from training.cluster_titles import DEFAULT_METHOD
    p = argparse.ArgumentParser(prog="cluster", description="Label the valid tracks of every "
                                "title with person ids (no labels, K or threshold needed).")
    p.add_argument("--shards", required=True, help="directory/URL of harvested Parquet shards")
    p.add_argument("--output", required=True, help="directory/URL: one <title_id>.parquet each")
    p.add_argument("--head", help=HEAD_HELP + " (default: raw embeddings)")
    p.add_argument("--method", default=DEFAULT_METHOD,
                   choices=sorted(n for n, m in methods.METHODS.items() if m.parameter_free
                                  or m.threshold),
                   help=f"default {DEFAULT_METHOD}; hac-threshold only with a head that has its "
                        f"own cut (bcl: 4b)")
    p.add_argument("--titles", nargs="+", help="only these titles (title_id or file name)")
    p.add_argument("--cannot-link", action="store_true",
                   help="hac-threshold never joins two tracks that share a frame")
    p.add_argument("--param", nargs="+", metavar="KEY=VALUE", help=PARAM_HELP)
    p.add_argument("--report", help="directory/URL: HTML galleries of each title's clusters")
    args = p.parse_args(argv)
    from training.cluster_titles import make_config, run
    try:
        params = methods.parse_params(args.param)
        make_config(args.method, args.head, args.cannot_link, params)
    except (ValueError, FileNotFoundError) as e:
        print(f"cluster: {e}", file=sys.stderr)
        return 2
    _ray_init()
    results = run(args.shards, args.output, args.head, args.method, args.titles, args.cannot_link,
                  params=params)
    n = {s: sum(r["status"] == s for r in results) for s in ("done", "skipped", "failed")}
    print(f"cluster: {n['done']} done, {n['skipped']} skipped, {n['failed']} failed -> {args.output}")
    if args.report:
        from training.cluster_titles import write_report
        print(f"report: {write_report(args.shards, args.output, args.report, args.titles)}")
    return 1 if n["failed"] else 0
