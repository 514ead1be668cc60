"""dlib backend: the embedded default, with models shipped by registry packages (no download).

HOG detector (or MMOD CNN), 68-point shape predictor (reduced to the 5 insightface landmarks),
ResNet 128-d descriptor on 150x150 chips, all from ``dlib-bin`` + ``face_recognition_models``.
Detector scores are the HOG/MMOD margins squashed with a logistic, so 0.5 is dlib's default cut.
"""
from __future__ import annotations

import importlib.util
import os

import cv2
import numpy as np

from harvest.faces.base import Detections, FaceBackend, ModelFile, suppress_nested


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
        return cls(det_threshold=config.det_threshold)

    def __init__(self, det_threshold: float = 0.5, det_size: int = 1280, upsample: int = 1,
                 cnn: bool = False):
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
        self.facerec = dlib.face_recognition_model_v1(self.embedder_path)

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
            kps = np.stack([self._five_points(frame, b) for b in boxes]).astype(np.float32)
            scores = (1.0 / (1.0 + np.exp(-2.0 * margins))).astype(np.float32)
            out.append(Detections(boxes, kps, scores))
        return out

    def _shape(self, frame: np.ndarray, box: np.ndarray):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        return self.shapes(frame, self._dlib.rectangle(x1, y1, x2, y2))

    def _five_points(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray:
        shape = self._shape(frame, box)
        pts = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
        return np.stack([pts[list(idx)].mean(axis=0) for idx in _FIVE_FROM_68])

    def _align(self, frame: np.ndarray, dets: Detections) -> np.ndarray:
        shapes = self._dlib.full_object_detections()
        for box in dets.boxes:
            shapes.append(self._shape(frame, box))
        chips = self._dlib.get_face_chips(frame, shapes, size=self.crop_size, padding=0.25)
        return np.stack([np.asarray(c) for c in chips])

    def _embed(self, crops: np.ndarray) -> np.ndarray:
        return np.array(self.facerec.compute_face_descriptor([np.ascontiguousarray(c) for c in crops]))
