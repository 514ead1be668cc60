"""Benchmark: every clustering method x every head on held-out titles with identities never seen
in training (issue 9, "Measure and report"), and the gain over raw embeddings against the
number of training tracks.

    python bench/methods_table.py --workdir DIR [--json PATH] [--heads ...] [--reuse ...]
                                  [--epochs N] [--curve] [--synthetic-curve]

1. Generates labelled titles with ``harvest.samples.make_clip`` from our own shot plans (longer
   than ``harvest sample``: ``--shots`` shots of 1-3 faces, face sizes varying by title).
   The package-shipped photos hold 7 identities: the training pool uses ids ``--train-ids``
   (default 0-3), the held-out titles ``--test-ids`` (default 4-6), so every held-out identity
   is new to the heads. The last training-pool title is the validation title of every run.
2. Harvests them all with ``harvest run`` (the real face pack, a local Ray) into
   ``DIR/harvest``; generation and harvest are cached in ``DIR`` (a re-run only trains and
   evaluates).
3. Trains every head (``--heads``, ``training.train.fit`` = ``train --head``, Ray Train) on the
   training titles, timing each run, then runs ``evaluate`` on the held-out titles for each
   head (raw, the trained ones, and the published BCL checkpoint when the shards' D is its
   256) in the known-K setting (hac-k, finch and c1c with K) and the K-free one (finch, c1c,
   ap, hac-threshold: the head's own cut, else a height fitted on the training titles; vcn
   when registered).
4. Prints markdown tables: pooled WCP / NMI / B-cubed F / PCR with the per-title PCR range,
   then every title; flags the goal (a K-free method whose PCR is in [0.8, 1.25] and WCP
   >= 0.90 on every held-out title) and whether each head beats raw (pooled NMI, same method).
5. ``--curve``: trains ``--curve-heads`` on the first 1, 2, 4, ... training titles and prints
   the NMI gain over raw (hac-k with K, and the K-free method best on raw) per training size.

Prints measured figures; asserts nothing. Times are wall times on a machine shared with other
work unless it was idle.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BCL_PUBLISHED = os.path.join(os.path.dirname(ROOT), "shared", "models",
                             "bcl_iccv2019_mlp_256-256-128-64-64.pth.tar")
FACE_PACK = os.path.join(os.path.dirname(ROOT), "shared", "models", "face-pack")
KNOWN_K = ("hac-k", "finch", "c1c")
K_FREE = ("finch", "c1c", "ap", "hac-threshold", "vcn")
FACE_SIZES = ((110, 150), (80, 109), (60, 82))
PCR_GOAL, WCP_GOAL = (0.8, 1.25), 0.90


# ------------------------------------------------------------------------------- titles
def shot_plan(ids, n_shots: int, seed: int) -> list:
    """``n_shots`` shots of 1-3 distinct identities drawn from ``ids``, 30-50 frames each."""
    from harvest.samples import ShotSpec
    rng = np.random.default_rng(seed)
    shots = []
    for _ in range(n_shots):
        k = min(int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25])), len(ids))
        who = tuple(int(i) for i in rng.choice(ids, size=k, replace=False))
        shots.append(ShotSpec(who, int(rng.integers(30, 51)), int(rng.integers(1 << 30))))
    return shots


def title_plans(n_train: int, n_test: int, train_ids, test_ids, n_shots: int,
                seed: int = 0) -> dict:
    """name -> dict(ids, shots, face_size, seed): ``train_XX`` then ``test_XX`` titles."""
    plans = {}
    for split, n, ids in (("train", n_train, train_ids), ("test", n_test, test_ids)):
        for i in range(n):
            s = seed * 1000 + (0 if split == "train" else 500) + i
            plans[f"{split}_{i:02d}"] = dict(ids=list(ids), n_shots=n_shots, seed=s,
                                             face_size=list(FACE_SIZES[i % len(FACE_SIZES)]))
    return plans


def make_titles(videos: str, plans: dict, width: int = 640, height: int = 360) -> None:
    """Renders each planned title (``<name>.mp4``) not yet rendered with the same plan, and one
    box-level ``labels.csv`` over all of them (the plan of each title is kept in plan.json)."""
    from harvest.samples import ClipTruth, make_clip, write_labels_csv
    os.makedirs(videos, exist_ok=True)
    plan_file = os.path.join(videos, "plan.json")
    old = json.load(open(plan_file)) if os.path.exists(plan_file) else {}
    truths = old.get("truth", {})
    for name, plan in plans.items():
        path = os.path.join(videos, f"{name}.mp4")
        if old.get("plans", {}).get(name) == plan and name in truths and os.path.exists(path):
            continue
        t0 = time.perf_counter()
        truth = make_clip(path, shot_plan(plan["ids"], plan["n_shots"], plan["seed"]),
                          width=width, height=height, face_size=tuple(plan["face_size"]),
                          seed=plan["seed"])
        truths[name] = dict(boxes=truth.boxes, frames=truth.frame_count)
        print(f"rendered {name}.mp4: {truth.frame_count} frames, "
              f"{len(truth.shot_boundaries)} shots in {time.perf_counter() - t0:.1f}s", flush=True)
    truths = {n: truths[n] for n in plans}
    labels = os.path.join(videos, "labels.csv")
    items = []
    for name in plans:
        ct = ClipTruth(fps=25.0, frame_count=truths[name]["frames"], width=width, height=height)
        ct.boxes = [tuple(r) for r in truths[name]["boxes"]]
        items.append((f"{name}.mp4", ct))
    write_labels_csv(labels, items)
    with open(plan_file, "w") as f:
        json.dump(dict(plans=plans, truth=truths), f)


def harvest(videos: str, out: str, models: str, workers: int) -> float:
    """``harvest run`` over ``videos`` (resumable: titles already done are skipped) -> seconds."""
    from harvest.cli import EXIT_OK, main as harvest_main
    t0 = time.perf_counter()
    code = harvest_main(["run", "--input", videos, "--output", out, "--models", models,
                         "--no-progress", "--workers", str(workers)])
    if code != EXIT_OK:
        raise RuntimeError(f"harvest run exited {code}")
    return time.perf_counter() - t0


def shard_subset(shards: str, names, out: str) -> str:
    """A directory of links to the shards of titles ``names`` (file names without .mp4)."""
    from training.data import resolve_titles, shard_info
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for info in resolve_titles(shard_info(shards), names):
        os.symlink(os.path.abspath(info["path"]), os.path.join(out, os.path.basename(info["path"])))
    return out


# ------------------------------------------------------------------------------- train / eval
def train(head: str, shards: str, runs: str, name: str, val_title: str, epochs: int,
          workers: int, **overrides) -> dict:
    """``train --head`` (``fit``) on ``shards`` -> dict(run dir, seconds, epochs, metrics)."""
    from training.data import shard_info
    from training.train import fit
    shutil.rmtree(os.path.join(runs, name), ignore_errors=True)     # fresh run, no resume
    n_train = len(shard_info(shards)) - 1
    t0 = time.perf_counter()
    result = fit(head, shards, runs, workers=max(1, min(workers, n_train)), name=name,
                 val_titles=[val_title], epochs=epochs, **overrides)
    seconds = time.perf_counter() - t0
    if result.error:
        raise RuntimeError(f"training {head} failed: {result.error}")
    m = result.metrics
    epoch_s = sum(h["seconds"] + h["val_seconds"] for h in _history(result))
    return dict(run=os.path.join(runs, name), seconds=seconds, epochs=m["epoch"],
                epoch_seconds=epoch_s, best_epoch=m["best_epoch"], val_loss=m["best_val_loss"],
                val_loss_init=m["val_loss_init"], radius_b=m.get("radius_b"))


def _history(result) -> list:
    import torch
    from training.checkpoints import STATE_FILE
    with result.checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, STATE_FILE), map_location="cpu",
                          weights_only=False)["state"]["history"]


def available(names) -> list:
    from training.clustering import methods
    return [m for m in names if m in methods.METHODS]


def evaluate_head(shards: str, labels: str, test: list, train_titles: list, head: str | None,
                  known: list, free: list, models: str = FACE_PACK) -> list[dict]:
    """Records of ``evaluate`` for one head: ``setting`` "known-K" and "K-free". ``vcn``
    fine-tunes the recogniser itself (no head): evaluated with raw only."""
    from training.evaluation.evaluate import evaluate
    from training.clustering.methods import get
    out = []
    if head is not None:                # a method that embeds the crops itself takes no head
        free = [m for m in free if not get(m).crops]
    for setting, methods, known_k in (("known-K", known, True), ("K-free", free, False)):
        if not methods:
            continue
        extra = dict(params=dict(models=models)) if any(get(m).crops for m in methods) else {}
        recs = evaluate(shards, test, labels, head=head, methods=methods, known_k=known_k,
                        val_titles=train_titles, log=lambda msg: print("  " + msg), **extra)
        out += [dict(r, setting=setting) for r in recs]
    return out


def shard_dim(shards: str) -> int:
    from training.data import shard_info
    return {i["dim"] for i in shard_info(shards)}.pop()


# ------------------------------------------------------------------------------- tables
def _f(x) -> str:
    return "nan" if x is None or x != x else f"{x:.3f}"


def summarise(records: list[dict], test_ids: dict) -> list[dict]:
    """One row per setting x method x head: pooled metrics, per-title PCR / WCP, goal flags."""
    rows, index = [], {}
    for r in records:
        key = (r["setting"], r["method"], r["head"])
        if key not in index:
            index[key] = dict(setting=key[0], method=key[1], head=key[2], titles={})
            rows.append(index[key])
        if r["title"] == "pooled":
            index[key]["pooled"] = r
        else:
            index[key]["titles"][test_ids.get(r["title"], r["title"])] = r
    raw = {(row["setting"], row["method"]): row["pooled"]["nmi"] for row in rows
           if row["head"] == "raw" and "pooled" in row}
    for row in rows:
        per = list(row["titles"].values())
        pcr = [t["pcr"] for t in per]
        row["pcr_range"] = (min(pcr), max(pcr)) if pcr else (float("nan"),) * 2
        row["goal"] = bool(row["setting"] == "K-free" and per and all(
            PCR_GOAL[0] <= t["pcr"] <= PCR_GOAL[1] and t["wcp"] >= WCP_GOAL for t in per))
        base = raw.get((row["setting"], row["method"]))
        row["nmi_gain"] = None if base is None or "pooled" not in row else \
            row["pooled"]["nmi"] - base
    return rows


def format_tables(rows: list[dict]) -> str:
    out = ["| setting | method | head | WCP | NMI | B-cubed F | PCR | PCR per title (min-max) | "
           "NMI vs raw | goal |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        p = row.get("pooled")
        if p is None:
            continue
        lo, hi = row["pcr_range"]
        gain = "" if row["head"] == "raw" or row["nmi_gain"] is None else f"{row['nmi_gain']:+.3f}"
        goal = "" if row["setting"] != "K-free" else ("**yes**" if row["goal"] else "no")
        out.append(f"| {row['setting']} | {row['method']} | {row['head']} | {_f(p['wcp'])} | "
                   f"{_f(p['nmi'])} | {_f(p['bcubed_f1'])} | {_f(p['pcr'])} | "
                   f"{_f(lo)}-{_f(hi)} | {gain} | {goal} |")
    titles = sorted({t for row in rows for t in row["titles"]})
    out += ["", "Per held-out title: WCP / NMI / B-cubed F / PCR (clusters:identities)", "",
            "| setting | method | head | " + " | ".join(titles) + " |",
            "|---|---|---|" + "---|" * len(titles)]
    for row in rows:
        cells = []
        for t in titles:
            r = row["titles"].get(t)
            cells.append("-" if r is None else f"{_f(r['wcp'])} / {_f(r['nmi'])} / "
                         f"{_f(r['bcubed_f1'])} / {_f(r['pcr'])} ({r['n_clusters']}:"
                         f"{r['n_identities']})")
        out.append(f"| {row['setting']} | {row['method']} | {row['head']} | "
                   + " | ".join(cells) + " |")
    hits = [f"{r['method']} ({r['head']})" for r in rows if r["goal"]]
    beat = [f"{r['method']} ({r['head']})" for r in rows
            if r["setting"] == "K-free" and r["goal"] and r["head"] != "raw"
            and (r["nmi_gain"] or 0) > 0]
    out += ["", f"Goal (K-free, PCR in [{PCR_GOAL[0]}, {PCR_GOAL[1]}] and WCP >= {WCP_GOAL} on "
            f"every held-out title): {', '.join(hits) if hits else 'reached by none'}; "
            f"with a head beating raw on pooled NMI: {', '.join(beat) if beat else 'none'}."]
    return "\n".join(out)


# ------------------------------------------------------------------------------- main
def parse(argv=None) -> argparse.Namespace:
    from training import registry
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="videos, harvest and runs (cached)")
    p.add_argument("--json", help="write {'table': rows, 'records': [...], ...} here")
    p.add_argument("--models", default=FACE_PACK, help="face pack for harvest run")
    p.add_argument("--train-titles", type=int, default=9,
                   help="training-pool titles (the last one validates every run)")
    p.add_argument("--test-titles", type=int, default=3)
    p.add_argument("--train-ids", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--test-ids", type=int, nargs="+", default=[4, 5, 6])
    p.add_argument("--shots", type=int, default=14, help="shots per title")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--heads", nargs="*", default=sorted(registry.HEADS),
                   choices=sorted(registry.HEADS), help="heads to train (none: raw only)")
    p.add_argument("--reuse", nargs="*", default=[], choices=sorted(registry.HEADS),
                   help="heads whose run under DIR/runs is evaluated without training again")
    p.add_argument("--known-k", nargs="*", default=list(KNOWN_K), help="known-K methods")
    p.add_argument("--k-free", nargs="*", default=list(K_FREE),
                   help="K-free methods (those not registered are left out)")
    p.add_argument("--epochs", type=int,
                   help="maximum epochs (default: each head's own, with early stopping)")
    p.add_argument("--batch-size", type=int, help="override every head's batch size")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers and harvest actors")
    p.add_argument("--no-published", action="store_true", help="leave out the published BCL")
    p.add_argument("--curve", action="store_true", help="gain vs number of training tracks")
    p.add_argument("--synthetic-curve", action="store_true",
                   help="the curve again on training/synthetic.py shards")
    p.add_argument("--curve-heads", nargs="+", default=["bcl", "imptriplet", "mvcorr"])
    p.add_argument("--curve-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    return p.parse_args(argv)


def main(argv=None) -> dict:
    import ray
    args = parse(argv)
    work = os.path.abspath(args.workdir)
    videos, out = os.path.join(work, "videos"), os.path.join(work, "harvest")
    runs = os.path.join(work, "runs")
    plans = title_plans(args.train_titles, args.test_titles, args.train_ids, args.test_ids,
                        args.shots)
    pool = [n for n in plans if n.startswith("train_")]
    test = [n for n in plans if n.startswith("test_")]
    if len(pool) < 2 or not test:
        raise SystemExit("need >= 2 training-pool titles (one validates) and >= 1 test title")
    train_titles, val_title = pool[:-1], pool[-1]
    print(f"{len(pool)} training-pool titles (ids {args.train_ids}; {val_title} validates), "
          f"{len(test)} held-out titles (ids {args.test_ids}), {args.shots} shots each; "
          f"{os.cpu_count()} CPUs (shared machine: times are noisy)", flush=True)
    make_titles(videos, plans, args.width, args.height)
    if not ray.is_initialized():
        # Ray Train's placement-group cleaner asks the State API whether the run's controller
        # lives; with several Ray instances on one machine it can reach another instance's
        # dashboard, miss the controller and remove the run's placement group (its workers die).
        # This cluster has no dashboard: point the State API nowhere (the cleaner just idles).
        os.environ.setdefault("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:9")
        ray.init(address="local", num_cpus=max(args.workers, 2), include_dashboard=False,
                 log_to_driver=False)
    figures = dict(harvest_seconds=harvest(videos, out, args.models, args.workers))
    shards, labels = os.path.join(out, "shards"), os.path.join(videos, "labels.csv")
    from training.data import resolve_titles, shard_info
    infos = shard_info(shards)
    test_ids = {i["title_id"]: n for i, n in zip(resolve_titles(infos, test), test)}
    tracks = {n: i["tracks"] for n in plans for i in resolve_titles(infos, [n])}
    print(f"harvest {figures['harvest_seconds']:.0f}s; tracks per title: "
          + ", ".join(f"{n} {t}" for n, t in tracks.items()), flush=True)
    known, free = available(args.known_k), available(args.k_free)
    overrides = {} if args.batch_size is None else dict(batch_size=args.batch_size)

    train_set = shard_subset(shards, pool, os.path.join(work, "sets", "table"))
    heads, timings = [("raw", None)], {}
    for head in args.heads:
        if head in args.reuse and os.path.isdir(os.path.join(runs, head)):
            print(f"{head}: evaluating the existing run {os.path.join(runs, head)}")
            heads.append((head, os.path.join(runs, head)))
            continue
        r = train(head, train_set, runs, head, val_title, args.epochs, args.workers, **overrides)
        timings[head] = r
        print(f"trained {head}: {r['seconds']:.1f}s wall ({r['epochs']} epochs, "
              f"{r['epoch_seconds']:.1f}s in epochs, best epoch {r['best_epoch']}, val loss "
              f"{r['val_loss_init']:.4f} -> {r['val_loss']:.4f}"
              + (f", b = {r['radius_b']:.3f}" if r["radius_b"] is not None else "") + ")",
              flush=True)
        heads.append((head, r["run"]))
    if not args.no_published:
        dim = shard_dim(shards)
        if not os.path.exists(BCL_PUBLISHED):
            print(f"bcl-published skipped: {BCL_PUBLISHED} not present")
        elif dim != 256:
            print(f"bcl-published skipped: the shards' embeddings are D = {dim}, the published "
                  f"BCL checkpoint takes D = 256 (VGGFace2 track features)")
        else:
            heads.append(("bcl-published", BCL_PUBLISHED))
    records = []
    for name, head in heads:
        t0 = time.perf_counter()
        recs = evaluate_head(shards, labels, test, train_titles, head, known, free, args.models)
        records += [dict(r, head=name) for r in recs]
        print(f"evaluated {name}: {time.perf_counter() - t0:.1f}s", flush=True)
    rows = summarise(records, test_ids)
    print("\n" + format_tables(rows) + "\n", flush=True)
    report = dict(plans=plans, tracks=tracks, figures=figures, training=timings,
                  table=[{k: v for k, v in r.items() if k not in ("titles", "pooled")}
                         | dict(pooled=r.get("pooled"), titles=r["titles"]) for r in rows],
                  records=records)
    if args.curve:
        report["curve"] = curve(args, shards, labels, pool, test, work, rows, overrides)
    if args.synthetic_curve:
        report["synthetic_curve"] = synthetic_curve(args, work, overrides)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=float)
    return report


def synthetic_curve(args, work: str, overrides: dict) -> list[dict]:
    """The curve on ``training.synthetic`` shards (default spec: D = 32, 6 identities and 60
    tracks per title, each title with its own identities, a per-track nuisance offset that a
    head can learn to remove): ``max(--curve-sizes)`` training titles + 1 validation title,
    ``--test-titles`` held-out titles."""
    from training.data import shard_info
    from training.synthetic import write_dataset
    root = os.path.join(work, "synthetic")
    n_pool = max(args.curve_sizes) + 1
    paths = write_dataset(root, n_pool + args.test_titles, seed=1)
    ids = sorted(i["title_id"] for i in shard_info(paths["shards"]))
    pool, test = ids[:n_pool], ids[n_pool:]
    raw = evaluate_head(paths["shards"], paths["track_labels"], test, pool[:-1], None,
                        ["hac-k"], ["finch", "c1c", "ap"])
    rows = summarise(raw, {})
    print("\nSynthetic shards (training/synthetic.py), raw embeddings:\n" + format_tables(rows))
    return curve(args, paths["shards"], paths["track_labels"], pool, test, root, rows, overrides)


def curve(args, shards, labels, pool, test, work, rows, overrides) -> list[dict]:
    """Train ``--curve-heads`` on the first n training titles; NMI gain over raw per n."""
    runs = os.path.join(work, "runs-curve")
    train_titles, val_title = pool[:-1], pool[-1]
    free = [r for r in rows if r["setting"] == "K-free" and r["head"] == "raw" and "pooled" in r
            and r["method"] != "hac-threshold"]
    best_free = max(free, key=lambda r: r["pooled"]["nmi"])["method"]
    raw = {(r["setting"], r["method"]): r["pooled"]["nmi"] for r in rows if r["head"] == "raw"}
    from training.data import resolve_titles, shard_info
    infos = shard_info(shards)
    out = []
    for n in [n for n in args.curve_sizes if n <= len(train_titles)]:
        names = train_titles[:n]
        n_tracks = sum(i["tracks"] for i in resolve_titles(infos, names))
        subset = shard_subset(shards, names + [val_title], os.path.join(work, "sets", f"n{n}"))
        for head in args.curve_heads:
            r = train(head, subset, runs, f"{head}-n{n}", val_title, args.epochs, args.workers,
                      **overrides)
            recs = evaluate_head(shards, labels, test, names, r["run"], ["hac-k"], [best_free])
            pooled = {(x["setting"], x["method"]): x["nmi"] for x in recs if x["title"] == "pooled"}
            row = dict(titles=n, tracks=n_tracks, head=head, seconds=r["seconds"],
                       hac_k=pooled[("known-K", "hac-k")], free_method=best_free,
                       free=pooled[("K-free", best_free)])
            row["hac_k_gain"] = row["hac_k"] - raw[("known-K", "hac-k")]
            row["free_gain"] = row["free"] - raw[("K-free", best_free)]
            out.append(row)
            print(f"curve: {n} titles ({n_tracks} tracks) {head}: NMI hac-k {row['hac_k']:.3f} "
                  f"({row['hac_k_gain']:+.3f}), {best_free} {row['free']:.3f} "
                  f"({row['free_gain']:+.3f}); trained in {r['seconds']:.0f}s", flush=True)
    print(f"\nNMI gain over raw on the held-out titles (raw: hac-k "
          f"{raw[('known-K', 'hac-k')]:.3f}, {best_free} {raw[('K-free', best_free)]:.3f})\n")
    print("| training titles | training tracks | head | hac-k (K) NMI | gain | "
          f"{best_free} (K-free) NMI | gain | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in out:
        print(f"| {r['titles']} | {r['tracks']} | {r['head']} | {r['hac_k']:.3f} | "
              f"{r['hac_k_gain']:+.3f} | {r['free']:.3f} | {r['free_gain']:+.3f} | "
              f"{r['seconds']:.0f} |")
    return out


if __name__ == "__main__":
    main()
