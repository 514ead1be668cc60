"""Console entry points ``train``, ``evaluate`` and ``cluster`` (also run by ``jobs/*.py`` under
``ray job submit --working-dir . -- python jobs/train.py ...``).

A usage mistake (a local path that does not exist, an output that is a file, a title in no
shard, labels that name no harvested title, an earlier ``train`` run without ``--resume`` or
``--overwrite``) is one line on stderr and exit 2, found before Ray starts; a remote URL is
checked when first read, also in one line."""
from __future__ import annotations

import argparse
import os
import sys

from training.clustering import hac, methods
from training import registry
from training.evaluation.evaluate import DEFAULT_METHODS


PARAM_HELP = ("method parameters over their defaults (JSON values), e.g. vcn's models=DIR "
              "device=cuda steps=4; the names are in training/clustering/methods.py")
HEAD_HELP = ("a trained head: a `train` run directory (--output/NAME: its best checkpoint), "
             "a checkpoint directory, or the published BCL file")
DEFAULT = " (default: %(default)s)"
VERBOSE_HELP = "show Ray's own start-up log (dashboard URL, INFO lines)"
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake on the command line: reported in one line, exit 2, before any work."""


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def check_path(flag: str, url: str | None) -> None:
    """A local path given to ``flag`` must exist. Remote URLs are not contacted here: their
    first read reports a missing one (in one line too: ``_main``)."""
    if url and _is_local(url) and not os.path.exists(url.removeprefix("file://")):
        raise UsageError(f"{flag} {url}: no such file or directory")


def check_dir(flag: str, url: str) -> None:
    """An output given to ``flag`` may be missing (it is created) but not an existing file."""
    path = url.removeprefix("file://")
    if _is_local(url) and os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {url} is an existing file; give a directory "
                         "(created if missing)")


def check_shards(url: str, **titles) -> None:
    """--shards must hold harvested shards, and every title named (``titles``: flag -> names)
    must be one of them (local shards: their footers only; no Ray)."""
    check_path("--shards", url)
    if not _is_local(url):
        return
    from training.data import resolve_titles, shard_info
    try:
        infos = shard_info(url)
    except FileNotFoundError:
        raise UsageError(f"--shards {url}: no harvested shard (.parquet) there") from None
    for flag, names in titles.items():
        try:
            resolve_titles(infos, names)
        except ValueError as e:
            raise UsageError(f"--{flag.replace('_', '-')}: {e}") from None


def _main(prog: str, body, argv) -> int:
    """Run a command body; a usage mistake, or a missing file found late (a remote URL), is
    one line on stderr and exit 2, never a traceback."""
    try:
        return body(argv)
    except (UsageError, FileNotFoundError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE


def _ray_init(verbose: bool = False):
    from harvest.run.raystart import init_ray
    init_ray(verbose)   # joins the job's cluster under `ray job submit`, else starts a local one


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train", description="Fit an adaptation head with Ray Train.")
    p.add_argument("--head", required=True, choices=sorted(registry.HEADS),
                   help="the head to train: " + ", ".join(sorted(registry.HEADS)))
    p.add_argument("--shards", required=True, help="directory/URL of harvested Parquet shards")
    p.add_argument("--output", required=True,
                   help="Ray Train storage path (local or URL): runs go to --output/NAME")
    p.add_argument("--name", help="run name under --output (default: the head)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run --output/NAME from its last checkpoint (a "
                            "finished run trains nothing more and reports its metrics)")
    again.add_argument("--overwrite", action="store_true",
                       help="delete the run --output/NAME and start over")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers" + DEFAULT)
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (default: CPU only)")
    p.add_argument("--val-titles", nargs="+",
                   help="validation titles, title_id or file name (default: hashed fraction)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of titles held out for validation without --val-titles" + DEFAULT)
    p.add_argument("--epochs", type=int, help="maximum epochs (default 100; early stopping)")
    p.add_argument("--batch-size", type=int, help="samples per step (default: the head's)")
    p.add_argument("--lr", type=float, help="learning rate (default: the head's)")
    p.add_argument("--labels", help="identity CSV: BCL trains in supervised mode on these tracks "
                                    "(default: weak labels mined by the harvest)")
    p.add_argument("--max-failures", type=int, default=0,
                   help="worker-group restarts from the last checkpoint after a worker dies"
                        + DEFAULT)
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return p


def train_main(argv=None) -> int:
    return _main("train", _train, argv)


def _run_choice(args) -> dict | None:
    """An earlier run under --output/NAME: resumed only with --resume, deleted with
    --overwrite, else a usage error naming both (a re-run must not pass off old metrics).
    -> the run resumed, if any."""
    from training.checkpoints import existing_run, remove_run
    run = existing_run(args.output, args.name or args.head)
    if run is None:
        return None
    done = f"checkpointed up to epoch {run['epoch']}" if run["epoch"] else "no checkpoint yet"
    if args.overwrite:
        print(f"train: deleting the earlier run {run['path']} ({done}); starting over",
              file=sys.stderr)
        remove_run(run)
        return None
    if args.resume:
        print(f"train: resuming the run {run['path']} ({done})", file=sys.stderr)
        return run
    raise UsageError(f"a run already exists at {run['path']} ({done}): add --resume to "
                     "continue it (or report it if finished), --overwrite to start over, "
                     "or give another --name")


def _train(argv) -> int:
    args = train_parser().parse_args(argv)
    check_shards(args.shards, val_titles=args.val_titles)
    check_path("--labels", args.labels)
    check_dir("--output", args.output)
    resumed = _run_choice(args) if _is_local(args.output) else None
    _ray_init(args.verbose)
    if not _is_local(args.output):
        resumed = _run_choice(args)
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
    if resumed and resumed["epoch"] and (result.metrics or {}).get("epoch") == resumed["epoch"]:
        print(f"train: the run was already finished at epoch {resumed['epoch']}: nothing was "
              "trained; the metrics below are its own", file=sys.stderr)
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
    from harvest.dataset.storage import open_fs
    from training.data import shard_info
    from training.evaluation.labels import assign, read_labels
    labels, out = read_labels(labels_url), {}
    for info in shard_info(shards):
        key = labels.key_for(info["title_id"], info["source_uri"])
        if key is None:
            continue
        fs, p = open_fs(info["path"])
        with fs.open(p, "rb") as f:
            t = pq.read_table(f, columns=[TRACK_ID, FRAME_IDX, BOXES])
        ids = t[TRACK_ID].to_numpy()
        who = assign(labels, key, ids, t[FRAME_IDX].to_pylist(), t[BOXES].to_pylist()) \
            if labels.level == "box" else assign(labels, key, ids)
        out.update({(info["title_id"], int(i)): w for i, w in zip(np.asarray(ids), who) if w})
    return out


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate", description="Cluster held-out titles and score.")
    p.add_argument("--shards", required=True, help="directory/URL of harvested Parquet shards")
    p.add_argument("--titles", nargs="+",
                   help="titles to evaluate, title_id or file name (default: all labelled)")
    p.add_argument("--labels", required=True, help="track- or box-level identity CSV")
    p.add_argument("--head", help=HEAD_HELP + " (default: raw embeddings)")
    p.add_argument("--method", nargs="+", default=list(DEFAULT_METHODS),
                   choices=sorted(methods.METHODS), help="clustering methods" + DEFAULT)
    p.add_argument("--cannot-link", action="store_true",
                   help="HAC methods never join two tracks that share a frame")
    p.add_argument("--known-k", action="store_true",
                   help="finch/c1c stop at the title's identity count (default: parameter-free)")
    p.add_argument("--linkage", default="average", choices=hac.LINKAGES,
                   help="HAC linkage (BCL's hac-threshold always uses complete)" + DEFAULT)
    p.add_argument("--val-titles", nargs="+",
                   help="titles that set the hac-threshold cut (default: leave-one-title-out)")
    p.add_argument("--json", help="write {'results': [...]} here")
    p.add_argument("--param", nargs="+", metavar="KEY=VALUE", help=PARAM_HELP)
    p.add_argument("--report", help="directory/URL: HTML galleries of the predicted clusters")
    return p


def evaluate_main(argv=None) -> int:
    return _main("evaluate", _evaluate, argv)


def _evaluate(argv) -> int:
    args = evaluate_parser().parse_args(argv)
    check_shards(args.shards, titles=args.titles, val_titles=args.val_titles)
    check_path("--labels", args.labels)
    check_path("--head", args.head)
    from training.evaluation.evaluate import NoLabelledTitle, evaluate, format_table, write_json
    try:
        records = evaluate(args.shards, args.titles, args.labels, head=args.head,
                           methods=args.method, linkage=args.linkage, val_titles=args.val_titles,
                           cannot_link=args.cannot_link, known_k=args.known_k,
                           report=args.report, params=methods.parse_params(args.param))
    except NoLabelledTitle as e:
        raise UsageError(str(e)) from None
    print(format_table(records))
    if args.json:
        write_json(records, args.json)
    return 0


def cluster_parser() -> argparse.ArgumentParser:
    from training.clustering.cluster_titles import DEFAULT_METHOD
    p = argparse.ArgumentParser(prog="cluster", description="Label the valid tracks of every "
                                "title with person ids (no labels, K or threshold needed).")
    p.add_argument("--shards", required=True, help="directory/URL of harvested Parquet shards")
    p.add_argument("--output", required=True, help="directory/URL: one <title_id>.parquet each")
    p.add_argument("--head", help=HEAD_HELP + " (default: raw embeddings)")
    p.add_argument("--method", default=DEFAULT_METHOD,
                   choices=sorted(n for n, m in methods.METHODS.items() if m.parameter_free
                                  or m.threshold),
                   help="clustering method; hac-threshold only with a head that has its own cut "
                        "(bcl: 4b)" + DEFAULT)
    p.add_argument("--titles", nargs="+",
                   help="only these titles, title_id or file name (default: every title)")
    p.add_argument("--cannot-link", action="store_true",
                   help="hac-threshold never joins two tracks that share a frame")
    p.add_argument("--param", nargs="+", metavar="KEY=VALUE", help=PARAM_HELP)
    p.add_argument("--report", help="directory/URL: HTML galleries of each title's clusters")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    return p


def cluster_main(argv=None) -> int:
    return _main("cluster", _cluster, argv)


def _cluster(argv) -> int:
    args = cluster_parser().parse_args(argv)
    check_shards(args.shards, titles=args.titles)
    check_path("--head", args.head)
    check_dir("--output", args.output)
    from training.clustering.cluster_titles import make_config, run
    try:
        params = methods.parse_params(args.param)
        make_config(args.method, args.head, args.cannot_link, params)
    except ValueError as e:
        raise UsageError(str(e)) from None
    _ray_init(args.verbose)
    results = run(args.shards, args.output, args.head, args.method, args.titles, args.cannot_link,
                  params=params)
    n = {s: sum(r["status"] == s for r in results) for s in ("done", "skipped", "failed")}
    print(f"cluster: {n['done']} done, {n['skipped']} skipped, {n['failed']} failed -> {args.output}")
    if args.report:
        from training.clustering.cluster_titles import write_report
        print(f"report: {write_report(args.shards, args.output, args.report, args.titles)}")
    return 1 if n["failed"] else 0


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export-head", description="Write a trained head as ONNX (head.onnx: unit-norm "
        "embeddings (N, D) -> the head's clustering embedding (N, E)) and, with --models, a face "
        "pack whose recogniser has the head appended (--output/pack: `harvest run --models` "
        "takes it as it is).")
    p.add_argument("--head", required=True, help=HEAD_HELP)
    p.add_argument("--output", required=True,
                   help="directory/URL: head.onnx, export.json and, with --models, pack/")
    p.add_argument("--models", help="directory/URL of the SCRFD + ArcFace-format .onnx pack the "
                                    "head was trained on (its recogniser's embeddings)")
    return p


def export_main(argv=None) -> int:
    return _main("export", _export, argv)


def _export(argv) -> int:
    args = export_parser().parse_args(argv)
    check_path("--head", args.head)
    check_path("--models", args.models)
    check_dir("--output", args.output)
    from training.export import ExportError, export
    try:
        record = export(args.head, args.output, args.models)
    except ExportError as e:
        raise UsageError(str(e)) from None
    head = record["head"]
    out = args.output.rstrip("/")
    print(f"export: {head['head']} head ({head['in_dim']} -> {head['out_dim']}, checkpoint "
          f"sha256 {head['checkpoint_sha256'][:12]}) -> {out}/{record['head_onnx']['file']} "
          f"(onnxruntime vs torch max abs diff {record['head_onnx']['max_abs_diff']:.2g})")
    if "pack" in record:
        pack = record["pack"]
        print(f"export: pack -> {out}/{pack['directory']}/ ({pack['detector']['file']}, "
              f"{pack['recogniser']['file']}: {pack['embedding_dim']}-d embeddings); harvest "
              f"with: harvest run --models {out}/{pack['directory']} ...")
    return 0
