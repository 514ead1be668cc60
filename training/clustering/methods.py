"""Clustering methods as a registry: one function + one :func:`register` call each, carrying its
defaults, whether it needs the number of identities K (``k``: "required", "optional" or "no"),
a cut height (``threshold``) and how it uses cannot-links (``cannot_link``: "always", "option"
= the ``--cannot-link`` flag, or "no"). ``evaluate`` and ``cluster`` only look methods up here.

Every method sees one title (``title_tracks.TitleTracks``: valid tracks, their mean embeddings,
cannot-links as track ids, per-face embeddings read on first use) and its track embeddings
(the head's ``embed_tracks``, raw means without a head), and returns (T,) labels.

    hac-k          HAC cut at K clusters (``linkage``, default average; training/clustering/hac.py)
    hac-threshold  HAC cut at a height: the head's own rule (BCL: 4b, complete linkage), else
                   a height fitted by ``evaluate`` on labelled titles
    ap             affinity propagation, cosine similarity, preference = median, damping 0.5
    finch          FINCH on the track embeddings, cosine, its last (coarsest) partition, or
                   ``req_clust`` = K when K is given (its first partition when K is larger:
                   FINCH never splits it) (training/clustering/finch.py, methods.md 6.1)
    c1c            C1C on the per-face embeddings (through the head's ``embed`` if any),
                   euclidean: must-links chain each track's faces (partition 0 = the tracks),
                   cannot-links join co-occurring tracks; merge cap = the longest distance
                   between two faces of one track (``cap="diameter"``, the reference's meaning)
                   or between consecutive faces (``cap="chain"``); last partition or K (6.2)
                   (FINCH and C1C take ``search``: the first-neighbour search by name,
                   ``training.clustering.finch.SEARCHES``; "exact" is the platform's)
    auto           ``cluster``'s default: the title's faces adapted to it (centred, whitened by
                   the within-track covariance), constrained average-linkage HAC cut at a height
                   calibrated on the title's own cannot-links (training/clustering/autocluster.py); K
                   optional (then the constrained HAC's K-cluster cut)
    vcn            VideoClusterNet: per-title self-supervised fine-tuning of the recogniser on
                   the shard's face crops, loss-as-distance clustering, never joining
                   co-occurring tracks (training/clustering/vcn.py, methods.md 5); needs crops
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from training.clustering import hac
from training.clustering.autocluster import DEFAULTS as AUTO_DEFAULTS
from training.clustering.title_tracks import TitleTracks
from training.clustering.vcn import DEFAULTS as VCN_DEFAULTS


# ------------------------------------------------------------------------------- registry
@dataclass
class Job:
    """What one method call gets: the title, its track embeddings (T, E), the head's model
    (None = raw), K, a (threshold, linkage) cut, the HAC linkage and the cannot-link flag."""
    title: TitleTracks
    emb: np.ndarray
    model: object = None
    k: int | None = None
    cut: tuple | None = None
    linkage: str = "average"
    cannot_link: bool = False
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable                 # Job -> (T,) labels
    k: str = "no"                 # "required" | "optional" | "no"
    threshold: bool = False       # needs a cut height
    cannot_link: str = "no"       # "always" | "option" | "no"
    defaults: dict = field(default_factory=dict)
    space: Callable | None = None     # Job -> (T, E) embeddings it clusters in (None: job.emb)
    faces: bool = False               # reads the per-face embeddings (TitleTracks.faces)
    crops: bool = False               # embeds the shard's face crops itself (TitleTracks.crops,
    #                                   its own recogniser from ``models``): a head does not apply

    def own(self, params: dict | None) -> dict:
        """The entries of ``params`` that are this method's parameters (keys of its defaults)."""
        return {k: v for k, v in (params or {}).items() if k in self.defaults}

    @property
    def parameter_free(self) -> bool:
        return self.k != "required" and not self.threshold

    def __call__(self, job: Job) -> np.ndarray:
        if job.title.n_tracks <= 1:
            return np.zeros(job.title.n_tracks, np.int64)
        job = replace(job, params={**self.defaults, **job.params})
        _, labels = np.unique(np.asarray(self.run(job)), return_inverse=True)
        return labels.astype(np.int64)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown clustering method {name!r}; choose from {sorted(METHODS)}") \
            from None


def parse_params(items) -> dict:
    """``KEY=VALUE`` strings (``--param``) -> dict; a value is JSON if it parses, else a string.
    Every key must be a parameter (a default) of some registered method."""
    import json
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or key not in {k for m in METHODS.values() for k in m.defaults}:
            raise ValueError(f"--param {item!r}: expected KEY=VALUE with KEY one of the methods' "
                             f"parameters {sorted({k for m in METHODS.values() for k in m.defaults})}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _cl(job: Job):
    return job.title.cannot_link_pairs() if job.cannot_link else None


def _hac_k(job: Job) -> np.ndarray:
    return hac.hac_k(job.emb, job.k, job.linkage, cannot_link=_cl(job))


def _hac_threshold(job: Job) -> np.ndarray:
    threshold, linkage = job.cut
    return hac.hac_threshold(job.emb, threshold, linkage, cannot_link=_cl(job))


def _ap(job: Job) -> np.ndarray:
    return hac.affinity_propagation(job.emb, job.params["damping"])


def _finch(job: Job) -> np.ndarray:
    from training.clustering.finch import finch, get_search, required_clusters
    search = get_search(job.params["search"])
    res = finch(job.emb, job.params["metric"], search=search)
    if not job.k:
        return res.partitions[:, -1]
    if job.k >= res.counts[0]:          # FINCH cannot split its first partition further
        return res.partitions[:, 0]
    return required_clusters(np.asarray(job.emb, np.float64), res.partitions, res.counts, job.k,
                             job.params["metric"], search)


def _c1c(job: Job) -> np.ndarray:
    from training.clustering.c1c import c1c_tracks
    from training.clustering.finch import get_search
    from training.registry import embed_rows
    t = job.title
    faces = embed_rows(job.model, t.faces)
    res = c1c_tracks(faces, t.track_of_face, t.track_ids, t.cannot_link, job.params["metric"],
                     req_clust=min(job.k, t.n_tracks) if job.k else None, cap=job.params["cap"],
                     search=get_search(job.params["search"]))
    face_labels = res.req if job.k else res.partitions[:, -1]
    first = np.searchsorted(t.track_of_face, np.arange(t.n_tracks))     # faces grouped by track
    return face_labels[first]


register(Method("hac-k", _hac_k, k="required", cannot_link="option"))
register(Method("hac-threshold", _hac_threshold, threshold=True, cannot_link="option"))
register(Method("ap", _ap, defaults=dict(damping=0.5)))
register(Method("finch", _finch, k="optional", defaults=dict(metric="cosine", search="exact")))
register(Method("c1c", _c1c, k="optional", cannot_link="always", faces=True,
                defaults=dict(metric="euclidean", cap="diameter", search="exact")))


def auto_space(job: Job) -> np.ndarray:
    """The track embeddings ``auto`` clusters: the title-adapted ones (training.clustering.autocluster),
    computed once per title, head and adaptation (``TitleTracks.memo``)."""
    from training.clustering.autocluster import adapted_tracks, unit
    from training.registry import embed_rows
    t, p = job.title, {**AUTO_DEFAULTS, **job.params}
    if p["adapt"] == "none":
        return unit(job.emb)

    def adapt():          # raw faces are read as they are (float32), not copied to float64
        faces = t.faces if job.model is None else embed_rows(job.model, t.faces)
        return adapted_tracks(faces, t.track_of_face, t.n_tracks, p["adapt"], p["shrink"])
    return t.memo(job.model, ("auto", p["adapt"], p["shrink"]), adapt)


def _auto(job: Job) -> np.ndarray:
    from training.clustering.autocluster import auto_cluster
    emb = auto_space(job)
    if job.k:
        return hac.hac_constrained(emb, job.title.cannot_link_pairs(), k=job.k, method="average")
    return auto_cluster(emb, job.title.cannot_link_pairs(), **job.params)[0]


register(Method("auto", _auto, k="optional", cannot_link="always", defaults=dict(AUTO_DEFAULTS),
                space=auto_space, faces=True))


def _vcn(job: Job) -> np.ndarray:
    from training.clustering.vcn_finetune import run
    return run(job)


register(Method("vcn", _vcn, cannot_link="always", crops=True, defaults=dict(VCN_DEFAULTS)))


def track_confidence(job: Job, labels: np.ndarray) -> np.ndarray:
    """(T,) calibrated probability that each track is with the right person, whatever method
    made ``labels`` (:mod:`training.clustering.confidence`, scored in ``auto``'s title-adapted space)."""
    from training.clustering.confidence import confidence
    if len(labels) == 0:
        return np.zeros(0)
    return confidence(auto_space(replace(job, params={})), labels)
