"""`harvest run | inspect | validate | sample | card | report` — the command data teams run.

Exit codes of `harvest run`: 0 every title done; 1 some titles failed (see the manifest; the
others are done); 2 bad usage, an unreadable --input, no video found or an --output that is a
file (nothing harvested, nothing written; checked before Ray starts). `inspect`, `validate`,
`card` and `report` of an output that does not exist: 2.
"""
from __future__ import annotations

import argparse
import sys

from harvest.config import HarvestConfig, RunOptions, help_of
from harvest.run.sources import VIDEO_EXTENSIONS

EXIT_OK, EXIT_TITLES_FAILED, EXIT_USAGE = 0, 1, 2


DEFAULT = " (default: %(default)s)"


def _option(group, flag: str, cls, **kw) -> None:
    """An option for setting ``flag`` of ``cls`` (HarvestConfig or RunOptions): its default and
    help text come from the dataclass (harvest/config.py), the one place they are written."""
    name = flag.lstrip("-").replace("-", "_")
    kw.setdefault("default", getattr(cls(), name))
    text = kw.pop("help", None) or help_of(cls, name)
    group.add_argument(flag, help=text + (DEFAULT if kw["default"] is not None else ""), **kw)


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("harvest (changes shard content; part of the config hash)")
    from harvest.faces.registry import choices
    from harvest.config import CROP_MODES
    _option(g, "--backend", HarvestConfig, choices=choices())
    _option(g, "--models", HarvestConfig)
    _option(g, "--det-stride", HarvestConfig, type=int, default=None,
            help="run the detector every N frames (default: the backend's recommended stride: "
                 + ", ".join(f"{n} {c.default_det_stride}" for n, c in _backends().items())
                 + ")")
    _option(g, "--det-size", HarvestConfig, type=int)
    _option(g, "--det-threshold", HarvestConfig, type=float)
    _option(g, "--min-face-size", HarvestConfig, type=float)
    _option(g, "--shot-threshold", HarvestConfig, type=float)
    _option(g, "--iou-threshold", HarvestConfig, type=float)
    _option(g, "--max-gap-seconds", HarvestConfig, type=float)
    _option(g, "--min-track-seconds", HarvestConfig, type=float)
    _option(g, "--quality-mad-k", HarvestConfig, type=float)
    _option(g, "--crops", HarvestConfig, choices=CROP_MODES)
    _option(g, "--crops-per-track", HarvestConfig, type=int)


def _backends() -> dict:
    from harvest.faces.registry import BACKENDS
    return BACKENDS


def _decoders() -> list[str]:
    from harvest.video.readers import choices
    return choices()


def _run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution (never changes shard content)")
    _option(g, "--workers", RunOptions, type=int)
    _option(g, "--cpus-per-worker", RunOptions, type=float)
    _option(g, "--gpus-per-worker", RunOptions, type=float)
    _option(g, "--titles-per-worker", RunOptions, type=int)
    _option(g, "--title-timeout", RunOptions, type=float)
    _option(g, "--max-attempts", RunOptions, type=int)
    _option(g, "--start-timeout", RunOptions, type=float)
    _option(g, "--chunk-frames", RunOptions, type=int)
    _option(g, "--decoder", RunOptions, choices=_decoders())
    _option(g, "--det-batch", RunOptions, type=int)
    _option(g, "--embed-batch", RunOptions, type=int)
    g.add_argument("--no-retry-failed", action="store_true",
                   help="leave titles that failed in an earlier run as they are (default: "
                        "harvest them again)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar (default: one on stderr)")
    _option(g, "--scratch-dir", RunOptions)
    g.add_argument("--verbose", action="store_true",
                   help="show Ray's own start-up log (dashboard URL, INFO lines)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="harvest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="harvest videos into face-track shards")
    run.add_argument("--input", required=True,
                     help="fsspec URL: a video file, a directory (searched recursively for "
                          + ", ".join(VIDEO_EXTENSIONS) + ") or a glob")
    run.add_argument("--output", required=True,
                     help="fsspec URL of the output root (a directory; created if missing)")
    _config_args(run)
    _run_args(run)
    for name, help_ in (("inspect", "print the manifest and shard statistics"),
                        ("validate", "check every shard against the schema and invariants")):
        sub.add_parser(name, help=help_).add_argument("url", help="output root of `harvest run`")
    sample = sub.add_parser("sample", help="write labelled sample clips made from package-shipped photos")
    sample.add_argument("out_dir", help="directory for the clips and their labels.csv")
    sample.add_argument("--titles", type=int, default=2, help="number of clips" + DEFAULT)
    card = sub.add_parser("card", help="write a Hugging Face dataset card (README.md) for an output")
    card.add_argument("url", help="output root of `harvest run`")
    card.add_argument("--out", default=None, help="card path or URL (default: URL/README.md)")
    card.add_argument("--license", default="other", help="Hub licence id of the dataset" + DEFAULT)
    card.add_argument("--pretty-name", default=None,
                      help="the dataset's name (default: movieface harvest <output dir name>)")
    card.add_argument("--contact", default=None,
                      help="who takes removal requests (default: the publisher of this dataset)")
    report = sub.add_parser("report", help="write a static HTML report (tracks, crops, shots)")
    report.add_argument("url", help="output root of `harvest run`")
    report.add_argument("--out", required=True, help="directory or URL of the report")
    report.add_argument("--tracks-per-page", type=int, default=200,
                        help="tracks on one page of a title" + DEFAULT)
    return ap


def parse(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def config_from(args) -> HarvestConfig:
    """The run's config; without --det-stride, the stride the chosen backend recommends (so the
    config hash and the shards record the stride actually used)."""
    stride = args.det_stride
    if stride is None:
        from harvest.faces.registry import default_det_stride
        stride = default_det_stride(args.backend, args.models)
    return HarvestConfig(backend=args.backend, models=args.models, det_stride=stride,
                         det_size=args.det_size, det_threshold=args.det_threshold,
                         min_face_size=args.min_face_size, shot_threshold=args.shot_threshold,
                         iou_threshold=args.iou_threshold, max_gap_seconds=args.max_gap_seconds,
                         min_track_seconds=args.min_track_seconds, quality_mad_k=args.quality_mad_k,
                         crops=args.crops, crops_per_track=args.crops_per_track)


def options_from(args) -> RunOptions:
    return RunOptions(workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                      gpus_per_worker=args.gpus_per_worker,
                      titles_per_worker=args.titles_per_worker, title_timeout=args.title_timeout,
                      max_attempts=args.max_attempts, start_timeout=args.start_timeout,
                      chunk_frames=args.chunk_frames, decoder=args.decoder,
                      det_batch=args.det_batch,
                      embed_batch=args.embed_batch, retry_failed=not args.no_retry_failed,
                      progress=not args.no_progress, scratch_dir=args.scratch_dir)


def progress_line(positions: list[dict], show: int = 3) -> str:
    """Running titles for the progress bar: position, percent and frames/s of each (first
    ``show``), then the total decode rate."""
    parts = []
    for p in sorted(positions, key=lambda p: p["title_id"])[:show]:
        pct = f" {100 * p['frames'] / p['total']:.0f}%" if p.get("total") else ""
        if p.get("total") and p["frames"] >= p["total"]:
            pct += " (decoded; finishing)"      # the last detections, tracking, mining, write
        parts.append(f"{p['title_id'][:20]} {p['frames']}/{p.get('total') or '?'}{pct} "
                     f"{p.get('fps', 0.0):.1f} f/s")
    if len(positions) > show:
        parts.append(f"+{len(positions) - show} more")
    if positions:
        parts.append(f"total {sum(p.get('fps', 0.0) for p in positions):.1f} f/s")
    return " | ".join(parts)


def check_output(url: str) -> None:
    """Refuse an --output that cannot be an output root (an existing file) before any work."""
    from harvest.dataset import storage
    fs, root = storage.open_fs(url)
    if fs.exists(root) and not fs.isdir(root):
        raise NotADirectoryError(f"--output {url} is an existing file; give a directory "
                                 "(created if missing)")


def cmd_run(args) -> int:
    from harvest.dataset import storage
    from harvest.reports.summary import summary_table
    from harvest.run.runner import harvest_sources, plan_run

    try:
        config, options = config_from(args), options_from(args)
        check_output(args.output)
        plan = plan_run(args.input, args.output, config, options)
    except (FileNotFoundError, ValueError, PermissionError, OSError) as exc:
        print(f"harvest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"harvest: {len(plan.sources)} titles, {len(plan.skipped)} already done, "
          f"{len(plan.todo)} to harvest (backend {plan.backend}, config {plan.config_hash})",
          file=sys.stderr)
    if plan.todo:
        from harvest.run.raystart import init_ray
        init_ray(args.verbose, log_to_driver=False)
    fs, root = storage.open_fs(args.output)
    bar = None
    if options.progress and plan.todo:
        from tqdm import tqdm
        bar = tqdm(total=len(plan.todo), unit="title", desc="harvest", file=sys.stderr)

    def on_record(record):
        if bar is not None:
            bar.update(1)

    def on_progress(positions):
        if bar is not None:
            bar.set_postfix_str(progress_line(positions), refresh=True)

    records = harvest_sources(plan, args.output, config, options, on_record=on_record,
                              on_progress=on_progress)
    if bar is not None:
        bar.set_postfix_str("")
        bar.close()
    all_records = storage.read_records(fs, root)
    storage.write_manifest(fs, root, all_records.values())
    this_run = {r["title_id"]: r for r in plan.skipped}
    this_run.update({r["title_id"]: r for r in records})
    print(summary_table([this_run[s.title_id] for s in plan.sources if s.title_id in this_run],
                        skipped={r["title_id"] for r in plan.skipped}))
    failed = [r for r in this_run.values() if r["status"] != "done"]
    return EXIT_TITLES_FAILED if failed else EXIT_OK


def main(argv=None) -> int:
    args = parse(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command in ("inspect", "validate", "card", "report"):
        from harvest.dataset import storage
        fs, root = storage.open_fs(args.url)
        if not fs.exists(root):
            print(f"harvest {args.command}: no such output: {args.url}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "inspect":
        from harvest.dataset.inspect_output import inspect_main
        return inspect_main(args.url)
    if args.command == "validate":
        from harvest.dataset.validate import validate_main
        return validate_main(args.url)
    if args.command == "sample":
        from harvest.samples import make_sample_set
        for path, _ in make_sample_set(args.out_dir, n_titles=args.titles):
            print(path)
        return EXIT_OK
    if args.command == "card":
        from harvest.dataset.card import card_main
        return card_main(args.url, args.out, license=args.license, pretty_name=args.pretty_name,
                         contact=args.contact)
    if args.command == "report":
        from harvest.reports.title import report_main
        return report_main(args.url, args.out, tracks_per_page=args.tracks_per_page)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
