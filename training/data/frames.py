"""The frame kinds of SSiam and TSiam: per title, its valid tracks' faces; each batch draws
``draw`` faces and its collate mines the pairs (from the title's
:class:`~training.losses.siamese_miners.FaceDistances` and neighbour lists, made once per title).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from training.columns import CANNOT_LINK, EMBEDDINGS, IS_VALID, MEAN_EMBEDDING, TITLE_ID, TRACK_ID
from training.data.decode import faces_of, float_vectors
from training.data.samples import SampleKind, Samples, build_samples, register_kind


FRAME_COLUMNS = (TITLE_ID, TRACK_ID, IS_VALID, MEAN_EMBEDDING, EMBEDDINGS, CANNOT_LINK)


def build_frames(table: pa.Table, identities=None) -> dict | None:
    """One title's valid tracks -> per-face ``x`` (F, D), ``track`` (F,) row, ``means`` (T, D)
    and ``cannot_link`` as lists of rows (meta). Tracks of several titles are kept apart by
    building per title (the frame batcher does)."""
    valid = table.filter(table[IS_VALID])
    if not valid.num_rows:
        return None
    x, track = faces_of(valid)
    ids = valid[TRACK_ID].to_numpy()
    row = {int(t): r for r, t in enumerate(ids)}
    links = [[row[int(o)] for o in (ls or ()) if int(o) in row]
             for ls in valid[CANNOT_LINK].to_pylist()]
    means = float_vectors(valid[MEAN_EMBEDDING], x.shape[1])[:, 0]
    return dict(x=x, track=track, meta=dict(means=means, cannot_link=links))


def frame_batches(kind: SampleKind, tables, batch_size: int, rng: np.random.Generator,
                  identities=None, hp=None) -> Iterator[tuple[Samples, np.ndarray]]:
    """Per title (titles in the given order), ceil(faces / ``batch_size``) batches; each batch
    is ``hp['draw']`` (default 3000) face indices drawn uniformly with replacement; the kind's
    collate mines ``batch_size`` pairs from them. Memory: one title's faces."""
    draw = _draw_size(hp)
    for table in tables:
        for title in np.unique(table[TITLE_ID].to_numpy(zero_copy_only=False)):
            s = build_samples(table.filter(pc.equal(table[TITLE_ID], title)), kind,
                              required=False)
            if s is None or len(s) < 2:
                continue
            if kind.prepare is not None:
                kind.prepare(s, hp or {})
            s.meta["n_pairs"] = batch_size
            for _ in range(-(-len(s) // batch_size)):
                yield s, rng.integers(0, len(s), draw)


def _draw_size(hp) -> int:
    """Faces drawn per frame batch: ``hp['draw']``, default 3000."""
    return int((hp or {}).get("draw") or 3000)


@dataclass(frozen=True)
class FrameKind(SampleKind):
    """A frame kind: ``miner(samples, idx)`` -> :class:`~training.losses.siamese_miners.Pairs`
    on the drawn faces; ``prepare(samples, hp)`` runs once per title (TSiam's negatives)."""
    miner: Callable = None
    prepare: Callable = None


def collate_pairs(samples: Samples, idx: np.ndarray) -> dict:
    """The miner's pairs of the drawn faces ``idx`` -> ``first``, ``second`` (P, D), ``similar``."""
    x = torch.from_numpy(samples.arrays["x"][idx])
    pairs = samples.kind.miner(samples, idx, x)
    return {"first": x[pairs.first], "second": x[pairs.second], "similar": pairs.similar}


def frames_kind(name: str, miner: Callable, prepare: Callable | None = None) -> FrameKind:
    return register_kind(FrameKind(name, build_frames, collate_pairs, frame_batches,
                                   FRAME_COLUMNS, "x", miner=miner, prepare=prepare))


def _distances(samples: Samples, hp: dict, negatives=None) -> None:
    """Once per title: its faces' distances and neighbour lists (SSiam's nearest and farthest
    faces; with TSiam's ``negatives`` the nearest faces of related tracks), which every draw
    of the title mines from."""
    from training.losses.face_distances import FaceDistances
    a = samples.arrays
    samples.meta["distances"] = FaceDistances(a["x"], draw=_draw_size(hp), negatives=negatives,
                                              track=None if negatives is None else a["track"])


def _ssiam_miner(samples: Samples, idx: np.ndarray, x: torch.Tensor):
    from training.losses.siamese_miners import ssiam_pairs
    return ssiam_pairs(x, samples.meta["n_pairs"], idx, samples.meta.get("distances"))


def _tsiam_prepare(samples: Samples, hp: dict) -> None:
    from training.losses.siamese_miners import tsiam_negative_tracks
    m = samples.meta
    m["negatives"] = tsiam_negative_tracks(m["means"], m["cannot_link"], int(hp.get("n_far") or 25))
    _distances(samples, hp, m["negatives"])


def _tsiam_miner(samples: Samples, idx: np.ndarray, x: torch.Tensor):
    from training.losses.siamese_miners import tsiam_pairs
    track = torch.from_numpy(samples.arrays["track"][idx])
    return tsiam_pairs(x, track, samples.meta["negatives"], torch.from_numpy(idx),
                       samples.meta["n_pairs"], samples.meta.get("distances"))


SSIAM_FRAMES = frames_kind("ssiam-frames", _ssiam_miner, _distances)
TSIAM_FRAMES = frames_kind("tsiam-frames", _tsiam_miner, _tsiam_prepare)
