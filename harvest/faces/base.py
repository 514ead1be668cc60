"""The face-backend interface: detect (batched over frames), align, embed (batched over faces).

A backend is a few model files plus a small class (insightface model_zoo style). The pipeline
only talks to this interface, so swapping a backend is one line in ``registry.py``.
"""
from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from harvest.vectors import l2_normalize


@dataclass(frozen=True)
class Detections:
    """Faces found in one frame.

    boxes  (n, 4) float32  x1, y1, x2, y2 in source pixels
    kps    (n, 5, 2) float32  left eye, right eye, nose, left mouth, right mouth
    scores (n,) float32
    """
    boxes: np.ndarray
    kps: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32),
                          np.zeros((0,), np.float32))

    def keep(self, mask: np.ndarray) -> "Detections":
        return Detections(self.boxes[mask], self.kps[mask], self.scores[mask])


@dataclass(frozen=True)
class DetectorInput:
    """One frame made ready for a detector that sees a resized frame (``FaceBackend.prepare``):
    ``image`` the backend's own uint8 image of it at the detector's input size (a numpy array or
    a tensor on its device), ``scale`` detector pixels per source pixel, ``shape`` the detector's
    input (height, width). A 4K frame is 25 MB; its 640-pixel letterbox is 0.7 MB."""
    image: object
    scale: float
    shape: tuple[int, int]


def suppress_nested(boxes: np.ndarray, scores: np.ndarray, cover: float = 0.5) -> np.ndarray:
    """Keep mask (bool (n,)) of greedy suppression by *containment*: going down the scores, drop a
    box when more than ``cover`` of the smaller of it and a kept box lies in their intersection.
    IoU-based NMS keeps a detector's second, larger window around the same head (IoU ~0.3, but
    the face box is 2/3 inside it), which becomes a duplicate track of the same person and, worse,
    a false cannot-link."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep = np.zeros(len(boxes), bool)
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        k = np.flatnonzero(keep)
        w = np.minimum(boxes[k, 2], boxes[i, 2]) - np.maximum(boxes[k, 0], boxes[i, 0])
        h = np.minimum(boxes[k, 3], boxes[i, 3]) - np.maximum(boxes[k, 1], boxes[i, 1])
        inter = np.maximum(w, 0) * np.maximum(h, 0)
        keep[i] = not (inter > cover * np.maximum(np.minimum(area[k], area[i]), 1e-9)).any()
    return keep


@dataclass(frozen=True)
class ModelFile:
    role: str   # "detector" | "embedder"
    path: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)


_SHA_CACHE: dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def check_frame(frame) -> None:
    """One (H, W, 3) uint8 RGB frame: a numpy array or a torch tensor."""
    dtype = str(frame.dtype).replace("torch.", "")
    if frame.ndim != 3 or frame.shape[2] != 3 or dtype != "uint8":
        raise ValueError(f"expected (H, W, 3) uint8 frames, got {tuple(frame.shape)} {frame.dtype}")


class FaceBackend(ABC):
    """Base class: owns thresholds and output validation; subclasses write the model calls.

    Frames are RGB uint8 arrays (H, W, 3). Subclasses implement ``_detect``, ``_align`` and
    ``_embed`` (and ``_prepare`` where the detector sees a resized frame); the public methods
    validate shapes and L2-normalise embeddings.
    ``det_threshold`` applies to ``Detections.scores`` (in [0, 1] for every backend).

    A backend also carries its own registry entry (class attributes and class methods), so the
    registry holds no per-backend knowledge:
      ``name``            the ``--backend`` value;
      ``auto_priority``   ``--backend auto`` tries backends in increasing priority;
      ``needs_models``    whether it loads its files from a ``--models`` directory;
      ``default_det_stride``  its recommended detection stride, used when ``--det-stride`` is
                          not given (``harvest.faces.registry.default_det_stride``);
      ``locate(dir)``     the files it would load (for config hashes), without loading them;
      ``usable(dir)``     its rule for ``auto``: can it run here with this model directory;
      ``build(dir, config, use_gpu, threads)``  an instance configured from a HarvestConfig.
    """
    name = "base"
    auto_priority = 100
    needs_models = False
    default_det_stride = 1

    @classmethod
    @abstractmethod
    def locate(cls, model_dir: str | None) -> list["ModelFile"]: ...

    @classmethod
    def usable(cls, model_dir: str | None) -> bool:
        """``auto`` picks the first usable backend: by default, one whose files are found."""
        if cls.needs_models and not model_dir:
            return False
        try:
            cls.locate(model_dir)
        except (FileNotFoundError, ModuleNotFoundError, ValueError):
            return False
        return True

    @classmethod
    @abstractmethod
    def build(cls, model_dir: str | None, config, *, use_gpu: bool = False,
              threads: int | None = None) -> "FaceBackend": ...

    def __init__(self, det_threshold: float = 0.5, det_size: int = 640):
        self.det_threshold = float(det_threshold)
        self.det_size = int(det_size)

    @property
    @abstractmethod
    def model_files(self) -> list[ModelFile]: ...

    @property
    @abstractmethod
    def embedding_dim(self) -> int: ...

    @property
    def crop_size(self) -> int:
        return 112

    @property
    def preferred_batches(self) -> tuple[int, int]:
        """(frames per detector call, faces per embedder call) this backend runs best with where
        it runs (``--det-batch`` / ``--embed-batch`` override them)."""
        return 8, 64

    @property
    def frame_device(self):
        """Where this backend wants decoded frames: None for numpy arrays on the CPU (the
        default), or a torch device for uint8 tensors there (readers then decode or upload to
        it, ``harvest.video.readers``), so frames decoded on a GPU stay on it."""
        return None

    def prepare(self, frame):
        """One (H, W, 3) uint8 RGB frame -> what the detector takes for it: a ``DetectorInput``
        for a backend that resizes frames for its detector (the detect stage prepares each frame
        as it is picked, so a batch waiting for the detector holds det-size images, not frames
        converted to float), else the frame itself (the default: ``_prepare``)."""
        check_frame(frame)
        return self._prepare(frame)

    def detect(self, frames) -> list[Detections]:
        """frames: (H, W, 3) uint8 RGB frames (a list of arrays, or for a backend with a
        ``frame_device`` an (n, H, W, 3) uint8 tensor there), or what ``prepare`` made of them
        -> one Detections per frame."""
        if len(frames) == 0:
            return []
        inputs = [f if isinstance(f, DetectorInput) else self.prepare(f) for f in frames]
        out = self._detect(inputs)
        if len(out) != len(frames):
            raise RuntimeError(f"{self.name}: {len(out)} detections for {len(frames)} frames")
        return [d.keep(d.scores >= self.det_threshold) for d in out]

    def align(self, frame: np.ndarray, dets: Detections) -> np.ndarray:
        """-> (n, S, S, 3) uint8 RGB aligned face crops, S = crop_size."""
        if len(dets) == 0:
            return np.zeros((0, self.crop_size, self.crop_size, 3), np.uint8)
        return self._align(frame, dets)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """crops (n, S, S, 3) uint8 RGB -> (n, D) float32, rows unit-norm."""
        if len(crops) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        emb = np.asarray(self._embed(crops), dtype=np.float32).reshape(len(crops), -1)
        if emb.shape[1] != self.embedding_dim:
            raise RuntimeError(f"{self.name}: embedding dim {emb.shape[1]} != {self.embedding_dim}")
        return l2_normalize(emb)

    def close(self) -> None:
        """Release what the backend holds beyond memory (processes); a no-op by default."""

    def _prepare(self, frame):
        return frame

    @abstractmethod
    def _detect(self, inputs: list) -> list[Detections]:
        """inputs: one ``prepare`` result per frame (by default the frames themselves)."""

    @abstractmethod
    def _align(self, frame: np.ndarray, dets: Detections) -> np.ndarray: ...

    @abstractmethod
    def _embed(self, crops: np.ndarray) -> np.ndarray: ...
