"""dlib backend: the embedded default, with models shipped by registry packages (no download).

HOG detector (or MMOD CNN), 68-point shape predictor (reduced to the 5 insightface landmarks),
ResNet 128-d descriptor on 150x150 chips, all from ``dlib-bin`` + ``face_recognition_models``.
Detector scores are the HOG/MMOD margins squashed with a logistic, so 0.5 is dlib's default cut.

Speed on CPU (this build of dlib-bin has AVX but no BLAS): HOG with ``upsample=1`` costs ~110 ms
per 360p frame and releases the GIL. The descriptor is dlib's ResNet with the same weights, read
from the same .dat file and run in torch (``harvest.faces.dlib_resnet``): ~12-20 ms per face on
one core, batched, GIL released, where dlib's own ``compute_face_descriptor`` costs ~100-130 ms
per face and holds the GIL; descriptors agree with dlib's to ~1e-6 (tests/test_dlib_resnet.py).
The 68-point shape found for the five landmarks in ``detect`` is reused by ``align``.
The recommended detection stride, ``default_det_stride``, is 4.
"""
from __future__ import annotations

import importlib.util
import os
import weakref

import cv2
import numpy as np

from harvest.faces.base import Detections, FaceBackend, ModelFile, suppress_nested
from harvest.faces.dlib_resnet import compute_descriptors, dlib_resnet


def dlib_model_dir() -> str:
    """Directory of face_recognition_models' files, found without importing the package
    (its __init__ needs pkg_resources, which current setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("face_recognition_models is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


# insightface order: image-left eye, image-right eye, nose tip, left and right mouth corners
_FIVE_FROM_68 = (range(36, 42), range(42, 48), (30,), (48,), (54,))


class DlibBackend(FaceBackend):
    name = "dlib"
    auto_priority = 90          # the embedded default: models ship with registry packages
    # the target stride for 2 cores on 360p titles: HOG costs ~0.11 s per detected frame in the one
    # detect thread, so stride 2 (12.5 detected frames/s) is HOG-bound below 0.75x real time
    # whatever the descriptor costs; at stride 4 HOG (~0.7 core-s per s of title) plus the torch
    # descriptor (~12 ms per face) ran at 1x real time even on a shared machine (load 15 on 2
    # cores; bench/harvest.py --backend dlib)
    default_det_stride = 4
    # model file name (fnmatch pattern, first match wins) -> licence of its weights (dataset cards)
    licences = {
        "shape_predictor_68_face_landmarks.dat": "dlib 68-point predictor trained on iBUG 300-W, "
                                                 "whose licence excludes commercial use",
        "dlib_face_recognition_resnet_model_v1.dat": "CC0 (dlib-models)",
        "*": "not recorded: see github.com/davisking/dlib-models",
    }

    @classmethod
    def locate(cls, model_dir: str | None = None, cnn: bool = False) -> list[ModelFile]:
        root = dlib_model_dir()
        return [ModelFile("detector", os.path.join(
                    root, "mmod_human_face_detector.dat" if cnn else "shape_predictor_68_face_landmarks.dat")),
                ModelFile("embedder", os.path.join(root, "dlib_face_recognition_resnet_model_v1.dat"))]

    @classmethod
    def build(cls, model_dir, config, *, use_gpu=False, threads=None) -> "DlibBackend":
        return cls(det_threshold=config.det_threshold, threads=threads)

    def __init__(self, det_threshold: float = 0.5, det_size: int = 1280, upsample: int = 1,
                 cnn: bool = False, threads: int | None = None, embed_batch: int = 16):
        super().__init__(det_threshold, det_size)
        import dlib

        self._dlib = dlib
        root = dlib_model_dir()
        self.detector_path, self.embedder_path = (m.path for m in self.locate(None, cnn))
        self.cnn = cnn
        self.upsample = int(upsample)
        self.hog = None if cnn else dlib.get_frontal_face_detector()
        self.mmod = dlib.cnn_face_detection_model_v1(self.detector_path) if cnn else None
        self.shapes = dlib.shape_predictor(os.path.join(root, "shape_predictor_68_face_landmarks.dat"))
        # torch threads for the descriptor: the worker's ``threads`` less the one HOG keeps busy
        # (detect and embed run concurrently). With 2 threads on 2 cores the descriptor's OpenMP
        # threads spin against HOG: a 30-s 360p title at stride 2 took 105 CPU s, 51 with 1.
        self.threads = threads
        if threads:
            import torch
            torch.set_num_threads(max(1, int(threads) - 1))
        self.embed_batch = int(embed_batch)
        self._facerec = None                    # dlib's own descriptor, loaded when first used
        self.resnet = dlib_resnet(self.embedder_path)   # parsed once per process
        self._shape_cache: dict = {}            # id(frame) -> (weakref, {box bytes: 68-pt shape})

    @property
    def facerec(self):
        """dlib's own descriptor on the same file (the reference the torch one is tested against)."""
        if self._facerec is None:
            self._facerec = self._dlib.face_recognition_model_v1(self.embedder_path)
        return self._facerec

    @property
    def model_files(self) -> list[ModelFile]:
        return self.locate(None, self.cnn)

    @property
    def embedding_dim(self) -> int:
        return 128

    @property
    def crop_size(self) -> int:
        return 150

    def _raw_detect(self, small: np.ndarray) -> tuple[list, np.ndarray]:
        if self.mmod is not None:
            found = self.mmod(small, self.upsample)
            return [d.rect for d in found], np.array([d.confidence for d in found], np.float32)
        rects, scores, _ = self.hog.run(small, self.upsample, -0.5)
        return list(rects), np.asarray(scores, np.float32)

    def _detect(self, frames: list[np.ndarray]) -> list[Detections]:
        out = []
        cache: dict = {}            # id(frame) -> (weakref, {box bytes: shape}), for _align
        self._shape_cache = cache   # only this batch's frames (align follows its detect)
        for frame in frames:
            h, w = frame.shape[:2]
            scale = min(1.0, self.det_size / max(h, w))
            small = frame if scale == 1.0 else cv2.resize(frame, (int(w * scale), int(h * scale)),
                                                          interpolation=cv2.INTER_AREA)
            rects, margins = self._raw_detect(np.ascontiguousarray(small))
            if not rects:
                out.append(Detections.empty())
                continue
            boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects],
                             np.float32) / scale
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w - 1)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h - 1)
            keep = suppress_nested(boxes, margins)      # HOG's larger second window on one head
            boxes, margins = boxes[keep], margins[keep]
            shapes = [self._shape(frame, b) for b in boxes]
            cache[id(frame)] = (weakref.ref(frame), {b.tobytes(): sh for b, sh in zip(boxes, shapes)})
            kps = np.stack([self._five_points(sh) for sh in shapes]).astype(np.float32)
            scores = (1.0 / (1.0 + np.exp(-2.0 * margins))).astype(np.float32)
            out.append(Detections(boxes, kps, scores))
        return out

    def _shape(self, frame: np.ndarray, box: np.ndarray):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        return self.shapes(frame, self._dlib.rectangle(x1, y1, x2, y2))

    @staticmethod
    def _five_points(shape) -> np.ndarray:
        pts = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
        return np.stack([pts[list(idx)].mean(axis=0) for idx in _FIVE_FROM_68])

    def _cached_shape(self, frame: np.ndarray, box: np.ndarray):
        """The shape ``detect`` found for this box of this very frame object, else a new one
        (same box, same pixels: the same shape either way)."""
        entry = self._shape_cache.get(id(frame))
        if entry is not None and entry[0]() is frame:
            shape = entry[1].get(np.asarray(box, np.float32).tobytes())
            if shape is not None:
                return shape
        return self._shape(frame, box)

    def _align(self, frame: np.ndarray, dets: Detections) -> np.ndarray:
        shapes = self._dlib.full_object_detections()
        for box in dets.boxes:
            shapes.append(self._cached_shape(frame, box))
        chips = self._dlib.get_face_chips(frame, shapes, size=self.crop_size, padding=0.25)
        return np.stack([np.asarray(c) for c in chips])

    def _embed(self, crops: np.ndarray) -> np.ndarray:
        return compute_descriptors(self.resnet, crops, batch=self.embed_batch)
