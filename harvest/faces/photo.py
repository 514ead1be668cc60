"""A face from a photo, embedded exactly as the harvest embeds a face in a frame: the same
backend and model pack, the same ``detect`` -> ``align`` -> ``embed`` calls the pipeline's
stages make on one frame (``people search --photo``, ``people remove --photo``).

Embeddings of two recognisers are not comparable, so a photo is only compared with shards
harvested by the same pack: :func:`check_pack` compares the sha256 values the shards record
(``detector_sha256``, ``embedder_sha256``) with the pack's files.
"""
from __future__ import annotations

import os

import numpy as np

from harvest.faces.registry import BACKENDS, model_files, resolve


class NoFace(ValueError):
    """The photo holds no face the backend detects."""


class PackMismatch(ValueError):
    """The model pack is not the one the shards were harvested with."""


def pack_fingerprint(models: str | None, backend: str) -> dict:
    """{"backend", "detector_sha256", "embedder_sha256"} of the pack, as shards record them."""
    name, model_dir = resolve(backend, models)
    files = {m.role: m for m in model_files(name, model_dir)}
    return dict(backend=name, detector_sha256=files["detector"].sha256,
                embedder_sha256=files["embedder"].sha256)


def check_pack(shard_meta: dict, models: str | None, backend: str | None = None) -> None:
    """Raise :class:`PackMismatch` (one line, both sha256 values) unless ``models`` is the pack
    that made the shard whose harvest metadata is ``shard_meta``."""
    backend = backend or shard_meta.get("backend") or "auto"
    try:
        mine = pack_fingerprint(models, backend)
    except FileNotFoundError as e:
        raise PackMismatch(f"the pack the shards were harvested with ({backend}) is not here: "
                           f"{e}; give it with --models") from None
    for key in ("detector_sha256", "embedder_sha256"):
        if shard_meta.get(key) and shard_meta[key] != mine[key]:
            raise PackMismatch(f"the model pack's {key.split('_')[0]} has sha256 {mine[key]}, "
                               f"the shards were harvested with {shard_meta[key]}: give "
                               "that pack with --models")


def read_image(image) -> np.ndarray:
    """A path or URL (fsspec) to an image file, its bytes, or an (H, W, 3) uint8 RGB array ->
    (H, W, 3) uint8 RGB."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"a photo array must be (H, W, 3) uint8 RGB, not {image.shape} "
                             f"{image.dtype}")
        return np.ascontiguousarray(image)
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if isinstance(image, str):
        import fsspec
        with fsspec.open(image, "rb") as f:
            data = f.read()
    else:
        data = bytes(image)
    import cv2
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        from io import BytesIO

        from PIL import Image                       # cv2's PNG decoder can break (samples.py)
        try:
            return np.asarray(Image.open(BytesIO(data)).convert("RGB"))
        except Exception:
            raise ValueError(f"{image if isinstance(image, str) else 'the photo'}: not an "
                             "image file") from None
    return np.ascontiguousarray(bgr[:, :, ::-1])


def load(models: str | None, backend: str = "insightface", det_size: int | None = None,
         det_threshold: float | None = None):
    """The harvest's backend for ``models``, built as a harvest worker builds it (CPU), with the
    detector settings of the harvest (default: ``HarvestConfig``'s; the shards record theirs)."""
    from harvest.config import HarvestConfig
    name, model_dir = resolve(backend, models)
    d = HarvestConfig()
    config = HarvestConfig(backend=name, models=model_dir,
                           det_size=d.det_size if det_size is None else int(det_size),
                           det_threshold=d.det_threshold if det_threshold is None
                           else float(det_threshold))
    return BACKENDS[name].build(model_dir, config, use_gpu=False, threads=None)


def embed_photo(image, models: str | None = None, backend: str = "insightface",
                det_size: int | None = None, det_threshold: float | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """-> (unit embedding (D,) float32, box (4,) x1 y1 x2 y2) of the photo's largest face, by the
    calls the harvest makes on one frame (``harvest.title.pipeline.detect_stage`` / ``embed_stage``:
    ``prepare`` -> ``detect`` -> ``align`` on the full frame -> ``embed``); :class:`NoFace` when
    there is none. ``det_size`` / ``det_threshold``: the harvest's, when it changed them."""
    rgb = read_image(image)
    b = load(models, backend, det_size, det_threshold)
    try:
        dets = b.detect([b.prepare(rgb)])[0]
        if len(dets) == 0:
            raise NoFace(f"no face found in {image if isinstance(image, str) else 'the photo'}")
        area = (dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])
        best = np.zeros(len(dets), bool)
        best[int(np.argmax(area))] = True
        one = dets.keep(best)
        emb = b.embed(b.align(rgb, one))[0]
    finally:
        b.close()
    return emb.astype(np.float32), np.asarray(one.boxes[0], np.float32)
