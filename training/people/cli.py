"""``people build | name | merge | split | search | remove | export``: people across titles.

Every subcommand takes ``--output URL`` (the people store, training/people/store.py); those
that read the harvest take ``--shards URL``. A person is given by id or by name; a track as
``TITLE:TRACK_ID`` with the title's id or file name. Mistakes (an unknown person, a merge of
two people who share a frame, a photo with no face or from another model pack) are one line on
stderr and exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from training.cli import (DEFAULT, HEAD_HELP, PARAM_HELP, VERBOSE_HELP, UsageError, _main,
                          _ray_init, check_dir, check_path, check_shards)

OUTPUT_HELP = "the people store (directory or URL)"
PERSON_HELP = "a person: id or name"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="people", description="People across titles: stable person "
                                "ids for a series or a corpus, corrections, face search, "
                                "takedown and exports.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    b = sub.add_parser("build", help="group the valid tracks of every title into people "
                                     "(again: new titles join, ids stay)")
    b.add_argument("--shards", required=True, help="directory/URL of harvested Parquet shards")
    b.add_argument("--head", help=HEAD_HELP + " (default: raw embeddings)")
    b.add_argument("--method", default="auto", help="each title's own clustering" + DEFAULT)
    b.add_argument("--titles", nargs="+", help="only these titles (title_id or file name)")
    b.add_argument("--param", nargs="+", metavar="KEY=VALUE", help=PARAM_HELP)
    b.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    n = sub.add_parser("name", help="name a person")
    n.add_argument("person", help=PERSON_HELP)
    n.add_argument("name")
    m = sub.add_parser("merge", help="the others are the first person (must-link)")
    m.add_argument("person", help=PERSON_HELP + ": the one that stays")
    m.add_argument("others", nargs="+", help="people merged into it")
    s = sub.add_parser("split", help="take tracks off a person (cannot-link)")
    s.add_argument("person", help=PERSON_HELP)
    s.add_argument("--tracks", nargs="+", required=True, metavar="TITLE:TRACK")
    s.add_argument("--as", dest="kind", default="new", choices=("new", "not_face", "unknown"),
                   help="a new person, or marked as not a face / unknown" + DEFAULT)
    q = sub.add_parser("search", help="people and tracks nearest to a photo or a track")
    _query(q)
    q.add_argument("--top", type=int, default=10, help="results of each kind" + DEFAULT)
    q.add_argument("--json", help="also write the results here as JSON")
    r = sub.add_parser("remove", help="take a person out of the harvest (takedown)")
    r.add_argument("--shards", required=True, help="the harvest's shards (OUT or OUT/shards)")
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--person", help=PERSON_HELP)
    who.add_argument("--photo", help="a photo: people and tracks within --threshold go")
    r.add_argument("--threshold", type=float, help="cosine similarity for --photo")
    r.add_argument("--models", help="the model pack the harvest used (for --photo)")
    r.add_argument("--reason", default="takedown request", help="for the audit log" + DEFAULT)
    r.add_argument("--request-id", help="the request's reference, for the audit log")
    e = sub.add_parser("export", help="per person titles and time ranges; per title WebVTT")
    e.add_argument("--to", required=True, help="directory/URL for people.json and titles/")
    e.add_argument("--report", help="directory/URL: person pages across titles (needs --shards)")
    e.add_argument("--shards", help="the harvest's shards (for --report's face crops)")
    for a in (b, n, m, s, q, r, e):
        a.add_argument("--output", required=True, help=OUTPUT_HELP)
    return p


def _query(q) -> None:
    what = q.add_mutually_exclusive_group(required=True)
    what.add_argument("--photo", help="an image file or URL (its largest face)")
    what.add_argument("--track", metavar="TITLE:TRACK", help="a track of the store")
    q.add_argument("--models", help="the model pack the harvest used (default: the backend's)")


def main(argv=None) -> int:
    return _main("people", _people, argv)


def _people(argv) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except ValueError as e:     # StoreError, the photo's NoFace and PackMismatch, bad names
        raise UsageError(str(e)) from None


def _build(args) -> int:
    from training.clustering import methods
    from training.people.build import build
    check_shards(args.shards, titles=args.titles)
    check_path("--head", args.head)
    check_dir("--output", args.output)
    params = methods.parse_params(args.param)
    _ray_init(args.verbose)
    with _locked(args):
        res = build(args.shards, args.output, args.head, args.method, params, args.titles)
    for f in res["failed"]:
        print(f"people: {f['title_id']} failed: {f['error']}", file=sys.stderr)
    print(f"people: {res['new_titles']} new title(s), {res['unchanged']} unchanged, "
          f"{len(res['failed'])} failed; {res['people']} people ({res['new_people']} new) in "
          f"{res['titles']} title(s), {res['tracks']} tracks; cut {res['tau']} -> {args.output}")
    return 1 if res["failed"] else 0


def _store(args):
    from training.people.store import Store
    check_path("--output", args.output)
    store = Store(args.output)
    return store, store.header()


def _locked(args):
    """The store's lock, held by a command that changes it (build, corrections, remove): two at
    once would each write back what it read and lose the other's change."""
    from harvest.dataset.storage import exclusive, open_fs
    return exclusive(*open_fs(args.output), f"people {args.cmd}")


def _rerender(store) -> None:
    from training.people.build import render
    render(store, store.header())


def _name(args) -> int:
    from training.people.corrections import name
    store, _ = _store(args)
    with _locked(args):
        e = name(store, args.person, args.name)
        _rerender(store)
    print(f"people: person {e['person']} is {e['name']!r}")
    return 0


def _merge(args) -> int:
    from training.people.corrections import merge
    store, _ = _store(args)
    with _locked(args):
        for e in merge(store, args.person, args.others):
            print(f"people: person {e['person']} merged into person {e['into']}")
        _rerender(store)
    return 0


def _split(args) -> int:
    from training.people.corrections import split
    from training.people.search import resolve_title
    from training.people.store import parse_track
    store, hdr = _store(args)
    tracks = [(resolve_title(hdr, t), k) for t, k in map(parse_track, args.tracks)]
    with _locked(args):
        e = split(store, args.person, tracks, args.kind)
        _rerender(store)
    to = f"new person {e['to']}" if e["op"] == "split" else f"marked {e['as']}"
    print(f"people: {len(e['tracks'])} track(s) off person {e['person']}: {to}")
    return 0


def _search(args) -> int:
    from training.people.search import format_results, search
    from training.people.store import parse_track
    check_path("--photo", args.photo)
    check_path("--models", args.models)
    _store(args)
    res = search(args.output, args.photo, parse_track(args.track) if args.track else None,
                 args.models, args.top)
    print(format_results(res))
    if args.json:
        from harvest.dataset.storage import open_fs, write_atomic
        write_atomic(*open_fs(args.json), json.dumps(res, indent=1).encode())
    return 0


def _remove(args) -> int:
    from training.people.remove import remove
    check_path("--shards", args.shards)
    check_path("--photo", args.photo)
    _store(args)
    with _locked(args):
        res = remove(args.output, args.shards, args.person, args.photo, args.threshold,
                     args.models, args.reason, args.request_id)
    print(f"people: removed person(s) {res['persons']}: {res['tracks']} track(s) in "
          f"{res['titles']} title(s) from the harvest and the store")
    return 0


def _export(args) -> int:
    from training.people.export import export, person_report
    _store(args)
    check_dir("--to", args.to)
    if args.report and not args.shards:
        raise UsageError("--report needs --shards (the face crops come from the shards)")
    res = export(args.output, args.to)
    print(f"people: {res['people']} people, {res['titles']} title(s) -> {args.to}")
    if args.report:
        check_shards(args.shards)
        print(f"report: {person_report(args.output, args.shards, args.report)}")
    return 0


COMMANDS = dict(build=_build, name=_name, merge=_merge, split=_split, search=_search,
                remove=_remove, export=_export)
