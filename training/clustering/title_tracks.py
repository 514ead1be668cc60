"""One title as the clustering methods see it: :class:`TitleTracks` (its valid tracks, their
mean embeddings and cannot-links; per-face embeddings and crops read on first use) and
:func:`read_tracks`, which reads it from a shard.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.clustering import hac
from training.columns import CANNOT_LINK, IS_VALID, MEAN_EMBEDDING, TRACK_ID
from harvest.dataset.storage import open_fs
from training.data import faces_of, float_vectors


@dataclass
class TitleTracks:
    """The valid tracks of one title, rows in ``track_id`` order."""
    title_id: str
    track_ids: np.ndarray                       # (T,) int64
    means: np.ndarray                           # (T, D) float32 mean embeddings
    cannot_link: list                           # per track: track ids it co-occurs with
    load_faces: Callable = field(repr=False, default=None)   # -> (faces (F, D), track row (F,))
    _faces: tuple | None = field(repr=False, default=None)
    load_crops: Callable = field(repr=False, default=None)   # -> per track (JPEGs, positions)
    _crops: tuple | None = field(repr=False, default=None)
    meta: dict = field(repr=False, default_factory=dict)     # the shard's harvest metadata
    _memo: list = field(repr=False, default_factory=list)    # (faces, model, key, value)

    @property
    def n_tracks(self) -> int:
        return len(self.track_ids)

    def _get_faces(self):
        if self._faces is None:
            self._faces = self.load_faces()
        return self._faces

    @property
    def faces(self) -> np.ndarray:
        return self._get_faces()[0]

    @property
    def track_of_face(self) -> np.ndarray:
        return self._get_faces()[1]

    @property
    def crops(self) -> tuple[list, list]:
        """(per track its crops' JPEG bytes, per track their positions into its faces)."""
        if self._crops is None:
            self._crops = self.load_crops()
        return self._crops

    def memo(self, model, key, compute: Callable):
        """``compute()`` once per (these faces, ``model``, ``key``): what several calls on one
        title derive from its faces (``auto``'s adapted space, then the confidence in it).
        Entries are matched by the faces array itself, so a subset or a copy of the title with
        other faces never takes another's value."""
        faces = self.faces
        for f, m, k, value in self._memo:
            if f is faces and m is model and k == key:
                return value
        value = compute()
        self._memo.append((faces, model, key, value))
        return value

    def cannot_link_pairs(self) -> np.ndarray:
        """(P, 2) row pairs i < j of co-occurring tracks."""
        return hac.cannot_link_pairs(self.track_ids, self.cannot_link)

    def subset(self, keep: np.ndarray) -> "TitleTracks":
        """The tracks where ``keep`` (bool (T,)) holds; faces follow lazily."""
        keep = np.asarray(keep, bool)
        parent = self

        def load():
            faces, tof = parent._get_faces()
            new_row = np.cumsum(keep) - 1
            m = keep[tof]
            return faces[m], new_row[tof[m]]

        def load_crops():
            return tuple([c for c, k in zip(col, keep) if k] for col in parent.crops)
        return replace(self, track_ids=self.track_ids[keep], means=self.means[keep], _memo=[],
                       cannot_link=[c for c, k in zip(self.cannot_link, keep) if k],
                       load_faces=load, _faces=None, load_crops=load_crops, _crops=None)


def read_tracks(path: str, columns=()) -> tuple[TitleTracks, "pa.Table"]:
    """(TitleTracks, table of its valid rows with the extra ``columns``) of one shard; the
    per-face embeddings are read only when a method or head asks for them."""
    from harvest.dataset.schema import read_metadata
    fs, p = open_fs(path)
    cols = list(dict.fromkeys([TRACK_ID, IS_VALID, MEAN_EMBEDDING, CANNOT_LINK, *columns]))
    with fs.open(p, "rb") as f:
        pf = pq.ParquetFile(f)
        meta = read_metadata(pf.schema_arrow)
        title_id = meta["title_id"]
        table = pf.read(columns=cols)
    table = table.filter(table[IS_VALID]).sort_by([(TRACK_ID, "ascending")])
    dim = table.schema.field(MEAN_EMBEDDING).type.list_size

    def load():
        from training.columns import EMBEDDINGS
        with fs.open(p, "rb") as f:
            t = pq.read_table(f, columns=[TRACK_ID, IS_VALID, MEAN_EMBEDDING, EMBEDDINGS])
        return faces_of(t.filter(t[IS_VALID]).sort_by([(TRACK_ID, "ascending")]))

    def load_crops():
        from training.columns import CROP_POSITIONS, CROPS
        with fs.open(p, "rb") as f:
            t = pq.read_table(f, columns=[TRACK_ID, IS_VALID, CROPS, CROP_POSITIONS])
        t = t.filter(t[IS_VALID]).sort_by([(TRACK_ID, "ascending")])
        return t[CROPS].to_pylist(), [np.asarray(c, np.int64) for c in t[CROP_POSITIONS].to_pylist()]
    tracks = TitleTracks(title_id, table[TRACK_ID].to_numpy(),
                         float_vectors(table[MEAN_EMBEDDING], dim)[:, 0],
                         [c or [] for c in table[CANNOT_LINK].to_pylist()], load,
                         load_crops=load_crops, meta=meta)
    return tracks, table
