"""insightface backend: an SCRFD detector and an ArcFace-format recogniser from one model directory.

Models are loaded through insightface's model_zoo (which routes an ONNX file to SCRFD or
ArcFaceONNX); inference is batched here: many frames per detector call, many aligned faces per
recogniser call (the model_zoo classes run one image at a time).
"""
from __future__ import annotations

import glob
import logging
import os

import cv2
import numpy as np

from harvest.faces.align import align_faces
from harvest.faces.base import Detections, DetectorInput, FaceBackend, ModelFile

_STRIDE_MULTIPLE = 32      # SCRFD's largest feature stride: input sides must be multiples of it

log = logging.getLogger(__name__)


def find_model_pack(model_dir: str) -> tuple[str, str]:
    """-> (detector.onnx, recogniser.onnx) in ``model_dir``, told apart by model_zoo routing."""
    from insightface.model_zoo import model_zoo
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    det = rec = None
    for path in sorted(glob.glob(os.path.join(model_dir, "*.onnx"))):
        model = model_zoo.get_model(path, providers=["CPUExecutionProvider"])
        if isinstance(model, SCRFD) and det is None:
            det = path
        elif isinstance(model, ArcFaceONNX) and rec is None:
            rec = path
    if det is None or rec is None:
        raise FileNotFoundError(
            f"{model_dir}: need one SCRFD detector and one ArcFace recogniser .onnx "
            f"(found detector={det}, recogniser={rec})")
    return det, rec


def _providers(use_gpu: bool) -> list[str]:
    import onnxruntime
    available = onnxruntime.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if use_gpu else []
    if use_gpu and not set(wanted) & set(available):
        log.warning("a GPU was asked for, but this onnxruntime has no CUDA provider (install "
                    "onnxruntime-gpu, or use --backend torch): running on CPU")
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


def check_providers(requested: list[str], sessions: dict) -> None:
    """onnxruntime lists the CUDA provider even where it cannot load it (no cuDNN, driver too
    old), and then quietly runs on CPU: a GPU node harvesting at CPU speed. Fail loudly instead.
    ``sessions``: name -> the providers each session actually got."""
    for name, got in sessions.items():
        missing = [p for p in requested if p != "CPUExecutionProvider" and p not in got]
        if missing:
            raise RuntimeError(
                f"onnxruntime could not start {', '.join(missing)} for the {name} (it runs on "
                f"{', '.join(got)}): check the CUDA/cuDNN libraries onnxruntime-gpu needs "
                f"(onnxruntime.preload_dlls() names the missing one), or run without GPUs")


def locate_pack(model_dir: str | None, backend: str) -> list[ModelFile]:
    """The detector + recogniser files of an SCRFD/ArcFace pack (both ONNX backends use it)."""
    if not model_dir:
        raise FileNotFoundError(f"--backend {backend} needs --models DIR (SCRFD + ArcFace .onnx)")
    det, rec = find_model_pack(model_dir)
    return [ModelFile("detector", det), ModelFile("embedder", rec)]


def detector_input_shape(h: int, w: int, det_size: int,
                         fixed: tuple[int, int] | None = None) -> tuple[int, int]:
    """Detector input (height, width) for an h x w frame. SCRFD is fully convolutional: the long
    side becomes ``det_size`` and the short side the next multiple of the largest stride, so a
    16:9 frame is not padded to a square (44 % of a 640 x 640 input was padding). Detectors
    exported with a fixed input shape keep that shape."""
    if fixed is not None:
        return fixed
    m = _STRIDE_MULTIPLE
    scale = det_size / max(h, w)
    return (max(m, -(-int(round(h * scale)) // m) * m), max(m, -(-int(round(w * scale)) // m) * m))


def _batch_dim_is_free(session) -> bool:
    return not isinstance(session.get_inputs()[0].shape[0], int)


class OnnxPackBackend(FaceBackend):
    """What both ONNX-pack backends (onnxruntime and torch) share: the pack's files and licences,
    the embedding size and the detector input-shape rule. Subclasses set ``detector_path``,
    ``embedder_path``, ``_dim`` and ``_fixed_input`` when they load the pack."""
    needs_models = True
    # model file name (fnmatch pattern, first match wins) -> licence of its weights (dataset cards)
    licences = {
        "scrfd_*.onnx": "InsightFace SCRFD weights: non-commercial research only (InsightFace's "
                        "terms for its pretrained models)",
        "det_*.onnx": "InsightFace buffalo_* detector: non-commercial research only",
        "w600k_*.onnx": "InsightFace buffalo_* ArcFace recogniser: non-commercial research only",
        "glintr100.onnx": "InsightFace antelopev2 ArcFace recogniser: non-commercial research only",
        "mobilefacenet*.onnx": "MobileFaceNet from a public repository: its upstream licence; "
                               "training data not documented",
        "*": "not recorded: the licence of the pack's upstream source applies (check it)",
    }

    @classmethod
    def locate(cls, model_dir: str | None) -> list[ModelFile]:
        return locate_pack(model_dir, cls.name)

    @property
    def model_files(self) -> list[ModelFile]:
        return [ModelFile("detector", self.detector_path), ModelFile("embedder", self.embedder_path)]

    @property
    def embedding_dim(self) -> int:
        return self._dim

    def input_shape(self, h: int, w: int) -> tuple[int, int]:
        return detector_input_shape(h, w, self.det_size, self._fixed_input)


class InsightFaceBackend(OnnxPackBackend):
    name = "insightface"
    auto_priority = 10          # preferred whenever a model pack is found

    @classmethod
    def usable(cls, model_dir: str | None) -> bool:
        # a model directory was given or found: choose this backend, and let a bad pack fail
        # loudly at load time rather than silently falling back to another backend
        return bool(model_dir)

    @classmethod
    def build(cls, model_dir, config, *, use_gpu=False, threads=None) -> "InsightFaceBackend":
        return cls(model_dir, det_threshold=config.det_threshold, det_size=config.det_size,
                   use_gpu=use_gpu, threads=threads)

    def __init__(self, model_dir: str, det_threshold: float = 0.5, det_size: int = 640,
                 nms_threshold: float = 0.4, use_gpu: bool = False, threads: int | None = None):
        super().__init__(det_threshold, det_size)
        from insightface.model_zoo import model_zoo

        self.detector_path, self.embedder_path = find_model_pack(model_dir)
        import onnxruntime
        opts = onnxruntime.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        # detection and embedding run concurrently (harvest.title.stages): idle threads must sleep,
        # not spin, or the two sessions steal each other's cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        kwargs = dict(providers=_providers(use_gpu), sess_options=opts)
        self.detector = model_zoo.get_model(self.detector_path, **kwargs)
        self.detector.nms_thresh = nms_threshold
        self.recognizer = model_zoo.get_model(self.embedder_path, **kwargs)
        check_providers(kwargs["providers"], {
            "detector": self.detector.session.get_providers(),
            "recogniser": self.recognizer.session.get_providers()})
        self._dim = int(self.recognizer.output_shape[1])
        self._on_gpu = "CUDAExecutionProvider" in self.detector.session.get_providers()
        fixed = self.detector.session.get_inputs()[0].shape[2:]
        self._fixed_input = None
        if all(isinstance(v, int) for v in fixed):      # static-shape detector (e.g. 640x640)
            self._fixed_input = (int(fixed[0]), int(fixed[1]))
            self.det_size = max(self._fixed_input)

    @property
    def preferred_batches(self) -> tuple[int, int]:
        """On CPU one frame per detector call: measured on a 5,000-frame 360p title (2 cores,
        stride 2), batches of 1, 2 and 8 frames all ran at 48-49 frames/s, and batch 1 peaked at
        915 MB RSS against 1,298 MB for batch 8 (onnxruntime's arena grows with the batch). On a
        GPU, 32 frames and 256 faces per call (not measured here)."""
        return (32, 256) if self._on_gpu else (1, 64)

    # -- detection -------------------------------------------------------------------------
    def _letterbox(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = frame.shape[:2]
        ih, iw = self.input_shape(h, w)
        scale = min(iw / w, ih / h)
        nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        canvas = np.zeros((ih, iw, 3), np.uint8)
        canvas[:nh, :nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
        return canvas, scale

    def _prepare(self, frame: np.ndarray) -> DetectorInput:
        canvas, scale = self._letterbox(frame)
        return DetectorInput(canvas, scale, canvas.shape[:2])

    def _detect(self, inputs: list[DetectorInput]) -> list[Detections]:
        det = self.detector
        blob = np.stack([p.image for p in inputs]).astype(np.float32)
        shape = blob.shape[1:3]
        blob = ((blob - det.input_mean) / det.input_std).transpose(0, 3, 1, 2)
        blob = np.ascontiguousarray(blob)
        if _batch_dim_is_free(det.session):
            outs = det.session.run(det.output_names, {det.input_name: blob})
        else:
            per = [det.session.run(det.output_names, {det.input_name: blob[i:i + 1]})
                   for i in range(len(inputs))]
            outs = [np.concatenate([p[k] for p in per]) for k in range(len(det.output_names))]
        return [self._decode(outs, i, p.scale, shape) for i, p in enumerate(inputs)]

    def _decode(self, outs: list[np.ndarray], i: int, scale: float,
                shape: tuple[int, int]) -> Detections:
        from insightface.model_zoo.scrfd import distance2bbox, distance2kps

        det, (ih, iw), fmc = self.detector, shape, self.detector.fmc
        scores_l, boxes_l, kps_l = [], [], []
        for level, stride in enumerate(det._feat_stride_fpn):
            scores = outs[level][i].reshape(-1)
            keep = np.where(scores >= self.det_threshold)[0]
            if keep.size == 0:
                continue
            centers = _anchor_centers(ih // stride, iw // stride, stride, det._num_anchors)[keep]
            scores_l.append(scores[keep])
            boxes_l.append(distance2bbox(centers, outs[level + fmc][i][keep] * stride))
            kps = distance2kps(centers, outs[level + 2 * fmc][i][keep] * stride)
            kps_l.append(kps.reshape(-1, 5, 2))
        if not scores_l:
            return Detections.empty()
        scores = np.concatenate(scores_l)
        boxes = np.concatenate(boxes_l) / scale
        kps = np.concatenate(kps_l) / scale
        keep = det.nms(np.hstack([boxes, scores[:, None]]).astype(np.float32))
        return Detections(boxes[keep].astype(np.float32), kps[keep].astype(np.float32),
                          scores[keep].astype(np.float32))

    # -- alignment and embedding ------------------------------------------------------------
    def _align(self, frame: np.ndarray, dets: Detections) -> np.ndarray:
        return align_faces(frame, dets.kps, self.crop_size)

    def _embed(self, crops: np.ndarray) -> np.ndarray:
        rec = self.recognizer
        blob = ((crops.astype(np.float32) - rec.input_mean) / rec.input_std).transpose(0, 3, 1, 2)
        blob = np.ascontiguousarray(blob)
        if _batch_dim_is_free(rec.session):
            return rec.session.run(rec.output_names, {rec.input_name: blob})[0]
        return np.concatenate([rec.session.run(rec.output_names, {rec.input_name: blob[i:i + 1]})[0]
                               for i in range(len(blob))])


_CENTERS: dict[tuple, np.ndarray] = {}


def _anchor_centers(h: int, w: int, stride: int, num_anchors: int) -> np.ndarray:
    key = (h, w, stride, num_anchors)
    if key not in _CENTERS:
        c = np.stack(np.mgrid[:h, :w][::-1], axis=-1).astype(np.float32).reshape(-1, 2) * stride
        _CENTERS[key] = np.repeat(c, num_anchors, axis=0) if num_anchors > 1 else c
    return _CENTERS[key]
