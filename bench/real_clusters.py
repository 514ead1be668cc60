"""Benchmark: who is in the title, on real faces. Every K-free clustering method and every way of
adapting the embedding, scored on the labelled real TV clips of ``../shared/data/real/``.

    python bench/real_clusters.py [--cache DIR] [--titles NAME ...] [--methods NAME ...]
                                  [--adapt NAME ...] [--known-k] [--json PATH]
                                  [--heads HEAD ...] [--transductive HEAD ...] [--seeds N]

1. Harvests the clips with the face pack (``../shared/models/face-pack``: SCRFD-2.5G +
   MobileFaceNet-128, the project's default settings) into ``--cache`` (default
   ``~/.cache/movieface/real``); a clip already harvested with the same config hash is reused.
2. Loads every **valid** track of a clip, as ``cluster`` sees it, and assigns identities from
   ``labels.csv`` (box labels, IoU >= 0.5, majority of a track's faces). Methods cluster all valid
   tracks; scores count only the labelled ones (tracks that match no labelled box are left out,
   as the labels' README asks).
3. For each adaptation of the embedding (``--adapt``, :data:`ADAPTATIONS`) and each K-free method
   (``--methods``, every parameter-free method of :mod:`training.clustering.methods` but those that embed
   crops, ``vcn``, by default), prints per clip and pooled WCP, NMI, B-cubed F and PCR (= clusters / people);
   ``--known-k`` adds the known-K rows (``hac-k``, ``finch`` and ``c1c`` given the clip's
   number of labelled people).
4. Leave one clip out: the only setting chosen on the clips (``auto``'s prior merge distance,
   :data:`training.clustering.autocluster.PRIOR_DISTANCE`) is re-chosen on the other clips for each clip
   and the held-out clip is reported with it (row ``auto (LOO)``).
5. ``--heads``: each head trained (Ray Train) on the *other* clips' unlabelled harvests;
   ``--transductive``: each head trained on the clip itself (``training.transductive``, the
   seed papers' per-episode use), ``--seeds`` runs each; every method then runs through it.
6. The confidence of ``cluster``'s output against correctness (a track is correct when its
   cluster's majority identity is its own): a reliability table per confidence bin.

Prints measured figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
REAL = os.path.join(SHARED, "data", "real")
FACE_PACK = os.path.join(SHARED, "models", "face-pack")
GOAL = dict(pcr=(0.8, 1.25), wcp=0.90, bcubed_f1=0.85)


# ------------------------------------------------------------------------------- harvest
def harvest(real: str = REAL, cache: str | None = None, titles=None, log=print) -> list[str]:
    """Shard paths of the clips in ``real`` (all, or those named by ``titles``: file names or
    stems), harvested into ``cache`` with the face pack unless already there (same config)."""
    from harvest.config import HarvestConfig, RunOptions
    from harvest.run.sources import list_sources
    from harvest.dataset.storage import open_fs, read_records
    from harvest.run.worker import TitleWorker
    cache = cache or os.path.expanduser("~/.cache/movieface/real")
    sources = [s for s in list_sources(real) if _named(s.uri, titles)]
    worker = TitleWorker(cache, HarvestConfig(models=FACE_PACK), RunOptions(), threads=os.cpu_count())
    fs, root = open_fs(cache)
    done = read_records(fs, root)
    paths = []
    for src in sources:
        rec = done.get(src.title_id)
        if not (rec and rec["status"] == "done" and rec["config_hash"] == worker.config_hash):
            t0 = time.perf_counter()
            rec = worker.process(src)
            if rec["status"] != "done":
                raise SystemExit(f"{src.uri}: {rec['error']}")
            log(f"harvested {os.path.basename(src.uri)}: {rec['tracks']} tracks "
                f"({rec['valid_tracks']} valid) in {time.perf_counter() - t0:.0f} s")
        paths.append(rec["shard_path"])
    return paths


def _named(uri: str, titles) -> bool:
    base = os.path.basename(uri)
    return not titles or base in titles or os.path.splitext(base)[0] in titles


# ------------------------------------------------------------------------------- clips
@dataclass
class Clip:
    name: str
    tracks: object          # training.clustering.title_tracks.TitleTracks: every valid track
    identity: np.ndarray    # (T,) object: the labelled identity, None where unmatched

    @property
    def labelled(self) -> np.ndarray:
        return np.array([i is not None for i in self.identity], bool)

    @property
    def people(self) -> int:
        return len(set(self.identity[self.labelled]))


def load_clips(paths: list[str], labels_url: str = os.path.join(REAL, "labels.csv")) -> list[Clip]:
    from training.columns import BOXES, FRAME_IDX
    from training.evaluation.labels import assign, read_labels
    from training.clustering.title_tracks import read_tracks
    labels = read_labels(labels_url)
    clips = []
    for path in paths:
        tracks, table = read_tracks(path, [FRAME_IDX, BOXES])
        key = labels.key_for(tracks.title_id, tracks.meta["source_uri"])
        who = assign(labels, key, tracks.track_ids, table[FRAME_IDX].to_pylist(),
                     table[BOXES].to_pylist())
        clips.append(Clip(os.path.splitext(key)[0], tracks, np.array(who, dtype=object)))
    return clips


# ------------------------------------------------------------------------------- scoring
def score(clips: list[Clip], preds: list[np.ndarray]) -> dict:
    """Label-based scores over the labelled tracks of ``clips`` (pooled: people and clusters
    kept apart per clip)."""
    from training.evaluation.metrics import clustering_scores
    y = np.concatenate([[f"{c.name}/{i}" for i in c.identity[c.labelled]] for c in clips])
    p = np.concatenate([[f"{c.name}/{k}" for k in pred[c.labelled]] for c, pred in zip(clips, preds)])
    s = clustering_scores(y, p)
    return {k: s[k] for k in ("wcp", "nmi", "bcubed_f1", "pcr", "n_clusters", "n_identities")}


def meets_goal(s: dict) -> bool:
    return (GOAL["pcr"][0] <= s["pcr"] <= GOAL["pcr"][1] and s["wcp"] >= GOAL["wcp"]
            and s["bcubed_f1"] >= GOAL["bcubed_f1"])


# ------------------------------------------------------------------------------- adaptations
def _adapter(clips: list[Clip], adapt: str):
    from training.clustering.autocluster import fit_adapter
    faces = np.concatenate([c.tracks.faces for c in clips])
    offsets = np.cumsum([0] + [c.tracks.n_tracks for c in clips])
    tof = np.concatenate([c.tracks.track_of_face + o for c, o in zip(clips, offsets)])
    return fit_adapter(faces, tof, int(offsets[-1]), adapt)


def adapted(clip: Clip, adapter) -> Clip:
    """The clip with its faces and track embeddings in the adapter's space (None: as is)."""
    from dataclasses import replace
    if adapter is None:
        return clip
    t = clip.tracks
    faces = adapter.embed(t.faces)
    tracks = replace(t, means=adapter.tracks(t.faces, t.track_of_face, t.n_tracks),
                     _faces=(faces, t.track_of_face), load_faces=lambda: (faces, t.track_of_face))
    return Clip(clip.name, tracks, clip.identity)


#: ways of adapting the embedding: (clip, the other clips) -> adapter (None = raw). Transductive
#: ones are fitted on the clip's own unlabelled tracks, "other clips" ones on the other clips'.
ADAPTATIONS = {
    "raw": lambda clip, others: None,
    "center": lambda clip, others: _adapter([clip], "center"),
    "wccn": lambda clip, others: _adapter([clip], "wccn"),
    "wccn (other clips)": lambda clip, others: _adapter(others, "wccn"),
}


def run_method(name: str, clip: Clip, model=None, k: int | None = None, params=None,
               head: str | None = None) -> np.ndarray:
    """A registered method on a clip, through a trained head's model (``head``: its name,
    for its clustering rule) or on the clip's embeddings as they are."""
    from training import registry
    from training.clustering.methods import Job, get
    method = get(name)
    rule = registry.get(head).embed_tracks if head else registry.mean_track_embedding
    emb = rule(model, clip.tracks) if model is not None else clip.tracks.means
    return method(Job(clip.tracks, emb, model, k=k, params=method.own(params)))


# ------------------------------------------------------------------------------- trained heads
def train_heads(clips: list[Clip], paths: list[str], heads, cache: str, epochs: int,
                log=print) -> dict:
    """Each head trained on the *other* clips' unlabelled harvests (one trains, one validates:
    ``train`` needs a validation title) for each clip, with Ray Train (1 worker), cached under
    ``cache/heads``. -> {(head, clip name): run directory}."""
    import glob
    from training.checkpoints import STATE_FILE, resolve_head
    from training.train import fit
    runs = {}
    for i, clip in enumerate(clips):
        others = [j for j in range(len(clips)) if j != i]
        if len(others) < 2:
            raise SystemExit("--heads needs three clips (one to train on, one to validate on)")
        fold = os.path.join(cache, "heads", f"without-{clip.name}")
        shards = os.path.join(fold, "shards")
        os.makedirs(shards, exist_ok=True)
        for j in others:
            link = os.path.join(shards, os.path.basename(paths[j]))
            if not os.path.exists(link):
                os.symlink(os.path.abspath(paths[j]), link)
        for head in heads:
            out = os.path.join(fold, "runs")
            if glob.glob(os.path.join(out, head, "*", STATE_FILE)):      # trained before
                runs[(head, clip.name)] = resolve_head(os.path.join(out, head))
                continue
            t0 = time.perf_counter()
            fit(head, shards, out, workers=1, name=head, epochs=epochs,
                val_titles=[clips[others[1]].tracks.title_id])
            runs[(head, clip.name)] = resolve_head(os.path.join(out, head))
            log(f"trained {head} without {clip.name} in {time.perf_counter() - t0:.0f} s")
    return runs


def head_rows(clips: list[Clip], runs: dict, heads, methods, known_k: bool) -> list[dict]:
    """Rows of the heads trained on the other clips (``runs``: :func:`train_heads`)."""
    from training.checkpoints import load_head
    rows = []
    for head in heads:
        loaded = [load_head(runs[(head, c.name)])[:2] for c in clips]
        rows += model_rows(clips, loaded, f"{head} (other clips)", methods, known_k)
    return rows


def model_rows(clips: list[Clip], loaded: list[tuple], adapt: str, methods,
               known_k: bool) -> list[dict]:
    """Rows of every method (and the known-K ones) through one model per clip (``loaded``:
    (head name, model) per clip)."""
    rows = []
    todo = [(m, None) for m in methods] + ([(m, "K") for m in ("hac-k", "c1c")] if known_k else [])
    for m, k in todo:
        preds = [run_method(m, c, model, k=c.people if k else None, head=name)
                 for c, (name, model) in zip(clips, loaded)]
        rows.append(dict(adapt=adapt, method=m + (" (K known)" if k else ""),
                         clips=[score([c], [p]) for c, p in zip(clips, preds)],
                         pooled=score(clips, preds)))
    return rows


def transductive_rows(clips: list[Clip], paths: list[str], heads, methods, known_k: bool,
                      epochs: int | None, seeds: int = 1, log=print) -> list[dict]:
    """Each head trained on each clip's own unlabelled harvest (``training.transductive``: no
    labels, no other title), then every method on that clip through it; ``seeds`` > 1 adds
    one row set per seed (the spread says what one training run's luck moves)."""
    from training.transductive import fit_title
    rows = []
    for head in heads:
        for seed in range(seeds):
            loaded = []
            for c, path in zip(clips, paths):
                t0 = time.perf_counter()
                loaded.append((head, fit_title(head, path, epochs, seed=seed)))
                log(f"{head} trained on {c.name} itself (seed {seed}) in "
                    f"{time.perf_counter() - t0:.0f} s")
            tag = f"{head} (the clip itself{f', seed {seed}' if seeds > 1 else ''})"
            rows += model_rows(clips, loaded, tag, methods, known_k)
    return rows


# ------------------------------------------------------------------------------- leave one out
GRID = dict(adapt=("none", "center", "wccn"), quantile=(0.5, 0.6, 0.7, 0.8, 0.9),
            offset=(-0.1, -0.05, 0.0, 0.05, 0.1))


def auto_predictions(clips: list[Clip], params: dict) -> list[np.ndarray]:
    """``auto`` with ``params`` on each clip (the adapted space is computed once per clip and
    adaptation: ``TitleTracks.memo``)."""
    from training.clustering.autocluster import auto_cluster
    from training.clustering.methods import AUTO_DEFAULTS, Job, auto_space
    p = {**AUTO_DEFAULTS, **params}
    return [auto_cluster(auto_space(Job(c.tracks, c.tracks.means, params=p)),
                         c.tracks.cannot_link_pairs(), **p)[0] for c in clips]


def objective(clips: list[Clip], preds: list[np.ndarray]) -> tuple:
    """What the selection maximises: clips meeting the goal, then mean B-cubed F."""
    s = [score([c], [p]) for c, p in zip(clips, preds)]
    return sum(map(meets_goal, s)), float(np.mean([x["bcubed_f1"] for x in s]))


def select(clips: list[Clip]) -> dict:
    import itertools
    best = None
    for values in itertools.product(*GRID.values()):
        params = dict(zip(GRID, values))
        obj = objective(clips, auto_predictions(clips, params))
        if best is None or obj > best[0]:
            best = (obj, params)
    return best[1]


def leave_one_out(clips: list[Clip], log=print) -> dict:
    """``auto`` on each clip with the setting selected on the other clips (row ``auto (LOO)``),
    and the setting selected on all clips (what the defaults should be)."""
    preds, chosen = [], {}
    for c in clips:
        others = [o for o in clips if o is not c]
        params = select(others)
        chosen[c.name] = params
        preds.append(auto_predictions([c], params)[0])
        log(f"auto (LOO) for {c.name}: chosen on {[o.name for o in others]}: {params}")
    return dict(adapt="title", method="auto (LOO)", params=chosen,
                clips=[score([c], [p]) for c, p in zip(clips, preds)], pooled=score(clips, preds),
                all_clips=select(clips) if len(clips) > 1 else None)


# ------------------------------------------------------------------------------- confidence
#: the clusterings the confidence is calibrated on: cluster's default and other K-free outputs
#: (more varied mistakes than the default alone makes on three clips)
CONFIDENCE_RUNS = (("auto", {}), ("auto", dict(offset=-0.1)), ("auto", dict(offset=0.1)),
                   ("c1c", {}), ("finch", {}), ("ap", {}))


def confidence_rows(clips: list[Clip], log=print) -> dict:
    """Per labelled track of each clip and each clustering of :data:`CONFIDENCE_RUNS`: its score
    (centroid cosine in the title-adapted space) and whether it is right. The calibration fitted
    leave one clip out (reliability of the held-out predictions, AUROC of finding the wrong
    tracks) and on all clips (what :data:`training.clustering.confidence.CALIBRATION` should be); beside it
    the old confidence (centroid cosine of the raw track means)."""
    from sklearn.metrics import roc_auc_score
    from training.clustering import confidence as cf
    from training.clustering.methods import Job, auto_space, get
    per = []
    for c in clips:
        space = auto_space(Job(c.tracks, c.tracks.means))
        parts = []
        for name, params in CONFIDENCE_RUNS:
            method = get(name)
            labels = method(Job(c.tracks, c.tracks.means, params=method.own(params)))
            lab = c.labelled
            parts.append(dict(score=cf.centroid_cosine(space, labels)[lab],
                              right=cf.correct(c.identity[lab], labels[lab]),
                              old=cf.centroid_cosine(c.tracks.means, labels)[lab]))
        per.append({k: np.concatenate([q[k] for q in parts]) for k in parts[0]})
    loo = []
    for i, p in enumerate(per):
        rest = [q for j, q in enumerate(per) if j != i]
        cal = cf.fit(*(np.concatenate([q[k] for q in rest]) for k in ("score", "right")))
        loo.append(cf.calibrate(p["score"], cal))
    cat = lambda k: np.concatenate([q[k] for q in per])
    right, loo = cat("right"), np.concatenate(loo)
    auroc = lambda x: float(roc_auc_score(right, x)) if 0 < right.sum() < len(right) else float("nan")
    return dict(loo=cf.reliability(loo, right), old=cf.reliability(np.clip(cat("old"), 0, 1), right),
                auroc_loo=auroc(loo), auroc_score=auroc(cat("score")), auroc_old=auroc(cat("old")),
                brier_loo=float(np.mean((loo - right) ** 2)),
                brier_base=float(np.mean((right.mean() - right) ** 2)),
                fitted_on_all=cf.fit(cat("score"), right), right=float(right.mean()),
                tracks=int(len(right)))


def reliability_table(rel: dict) -> str:
    lines = ["| confidence | tracks (LOO) | mean conf. (LOO) | right (LOO) | tracks (centroid cosine) "
             "| right (centroid cosine) |", "|---|---|---|---|---|---|"]
    for (lo, hi, n, m, r), (_, _, n_old, _, r_old) in zip(rel["loo"], rel["old"]):
        lines.append(f"| {lo:.1f}-{hi:.1f} | {n} | {m:.2f} | {r:.2f} | {n_old} | {r_old:.2f} |")
    return "\n".join(lines)


def table(rows: list[dict], clips: list[Clip]) -> str:
    head = ["adapt", "method"] + [f"{c.name} PCR / WCP / F" for c in clips] + \
        ["pooled WCP", "pooled NMI", "pooled B3 F", "goal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["adapt"], r["method"]]
        cells += [f"{s['pcr']:.2f} / {s['wcp']:.2f} / {s['bcubed_f1']:.2f}" for s in r["clips"]]
        p = r["pooled"]
        cells += [f"{p['wcp']:.3f}", f"{p['nmi']:.3f}", f"{p['bcubed_f1']:.3f}",
                  f"{sum(map(meets_goal, r['clips']))}/{len(clips)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_all(clips: list[Clip], methods, adapts, known_k: bool = False, log=print) -> list[dict]:
    """Rows of scores for each adaptation x method (``auto`` runs without its own adaptation
    on adapted clips: the row shows the adaptation's part and the calibrated cut's part)."""
    rows = []
    own = dict(adapt="none")
    for a in adapts:
        if a.endswith("(other clips)") and len(clips) < 2:
            log(f"{a}: skipped (needs more than one clip)")
            continue
        views = [adapted(c, ADAPTATIONS[a](c, [o for o in clips if o is not c])) for c in clips]
        for m in methods:
            t0 = time.perf_counter()
            preds = [run_method(m, v, params=own) for v in views]
            rows.append(dict(adapt=a, method="auto (cut only)" if m == "auto" else m,
                             seconds=time.perf_counter() - t0,
                             clips=[score([c], [p]) for c, p in zip(clips, preds)],
                             pooled=score(clips, preds)))
        if a == "raw" and "c1c" in methods:     # c1c as it was: the chain cap
            preds = [run_method("c1c", v, params=dict(cap="chain")) for v in views]
            rows.append(dict(adapt=a, method="c1c (cap=chain)",
                             clips=[score([c], [p]) for c, p in zip(clips, preds)],
                             pooled=score(clips, preds)))
        if known_k:
            for m in ("hac-k", "finch", "c1c", "auto"):
                preds = [run_method(m, v, k=c.people, params=own) for c, v in zip(clips, views)]
                rows.append(dict(adapt=a, method=f"{m} (K known)",
                                 clips=[score([c], [p]) for c, p in zip(clips, preds)],
                                 pooled=score(clips, preds)))
    if "auto" in methods:                   # cluster's default as it runs: its own adaptation
        preds = [run_method("auto", c) for c in clips]
        rows.append(dict(adapt="auto's own (wccn)", method="auto (default)",
                         clips=[score([c], [p]) for c, p in zip(clips, preds)],
                         pooled=score(clips, preds)))
    return rows


def main(argv=None) -> None:
    from training.clustering.methods import METHODS
    k_free = [n for n, m in METHODS.items() if m.parameter_free and not m.crops]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=None, help="harvest cache (default ~/.cache/movieface/real)")
    ap.add_argument("--real", default=REAL, help="folder of labelled clips with labels.csv")
    ap.add_argument("--titles", nargs="*", default=None, help="clip names (default: all)")
    ap.add_argument("--methods", nargs="*", default=k_free)
    ap.add_argument("--adapt", nargs="*", default=list(ADAPTATIONS))
    ap.add_argument("--known-k", action="store_true")
    ap.add_argument("--no-loo", action="store_true", help="skip the leave-one-clip-out selection")
    ap.add_argument("--heads", nargs="*", default=[],
                    help="also train these heads on the other clips (Ray Train) and score them")
    ap.add_argument("--epochs", type=int, default=30, help="most epochs of a --heads run")
    ap.add_argument("--transductive", nargs="*", default=[],
                    help="also train these heads on each clip itself (no labels) and score them")
    ap.add_argument("--transductive-epochs", type=int, default=None,
                    help="epochs of a --transductive fit (default: training.transductive's)")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds of --transductive")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    paths = harvest(args.real, args.cache, args.titles)
    clips = load_clips(paths, os.path.join(args.real, "labels.csv"))
    for c in clips:
        print(f"{c.name}: {c.tracks.n_tracks} valid tracks, {int(c.labelled.sum())} labelled, "
              f"{c.people} people, {len(c.tracks.cannot_link_pairs())} cannot-linked pairs")
    t0 = time.perf_counter()
    rows = evaluate_all(clips, args.methods, args.adapt, args.known_k)
    seconds = time.perf_counter() - t0
    if args.heads:
        cache = args.cache or os.path.expanduser("~/.cache/movieface/real")
        runs = train_heads(clips, paths, args.heads, cache, args.epochs)
        rows += head_rows(clips, runs, args.heads, args.methods, args.known_k)
    if args.transductive:
        rows += transductive_rows(clips, paths, args.transductive, args.methods, args.known_k,
                                  args.transductive_epochs, args.seeds)
    if len(clips) > 1 and not args.no_loo:
        loo = leave_one_out(clips)
        rows.append(loo)
        print(f"auto: setting selected on all {len(clips)} clips: {loo['all_clips']}")
    print(table(rows, clips))
    import resource
    print(f"\n{len(rows)} rows in {seconds:.1f} s ({sum(c.tracks.n_tracks for c in clips)} tracks, "
          f"{sum(len(c.tracks.track_of_face) for c in clips)} faces); peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    rel = None
    if len(clips) > 1:
        rel = confidence_rows(clips)
        print(f"\nconfidence against correctness: {rel['tracks']} labelled track placements "
              f"({len(CONFIDENCE_RUNS)} clusterings per clip), {rel['right']:.2f} right. AUROC of "
              f"finding the wrong ones: adapted-space score {rel['auroc_score']:.3f} (pooled), "
              f"calibrated LOO {rel['auroc_loo']:.3f}, raw centroid cosine {rel['auroc_old']:.3f}; "
              f"Brier LOO {rel['brier_loo']:.3f} (constant: {rel['brier_base']:.3f}); "
              f"calibration fitted on all clips: {rel['fitted_on_all']}")
        print(reliability_table(rel))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, confidence=rel), f, indent=1, default=float)


if __name__ == "__main__":
    main()
