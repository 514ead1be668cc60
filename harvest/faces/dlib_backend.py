"""dlib backend: the embedded default, with models shipped by registry packages (no download).

HOG detector (or MMOD CNN), 68-point shape predictor (reduced to the 5 insightface landmarks),
ResNet 128-d descriptor on 150x150 chips, all from ``dlib-bin`` + ``face_recognition_models``.
Detector scores are the HOG/MMOD margins squashed with a logistic, so 0.5 is dlib's default cut.

Speed on CPU (this build of dlib-bin has AVX but no BLAS): HOG with ``upsample=1`` costs ~110 ms
per 360p frame and releases the GIL; the descriptor costs ~100-130 ms per face on one core and
holds the GIL for the whole call. So the descriptor runs in a child process
(``harvest.faces.dlib_descriptor``), and ``align`` already hands each frame's chips to it: the
descriptors are computed while the detector goes on with the next frames, whatever the
pipeline's batch and queue sizes, and ``embed`` collects them (chips are matched by content, so
``embed`` of anything else is computed on the spot; results are the same doubles as in-process).
The 68-point shape found for the five landmarks in ``detect`` is reused by ``align``.
The recommended detection stride, ``default_det_stride``, is 4.
"""
from __future__ import annotations

import collections
import hashlib
import importlib.util
import os
import threading
import weakref

import cv2
import numpy as np

from harvest.faces.base import Detections, FaceBackend, ModelFile, suppress_nested
from harvest.faces.dlib_descriptor import ChildDied, DescriptorProcess


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
    # the target stride for 2 cores on 360p titles: ~0.1 s of HOG per detected frame plus ~0.07-0.1 s
    # per face (descriptor children) is ~90-120 core-s per minute of a title with ~2 faces per
    # frame at stride 4, i.e. about 1x real time on 2 idle cores (bench/harvest.py --backend dlib)
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
        return cls(det_threshold=config.det_threshold, descriptor_processes=threads)

    # faces handed to the descriptor process by ``align`` and not yet taken by ``embed``: past
    # this, ``align`` stops handing them over (align without embed must not grow without bound)
    max_ahead = 512

    def __init__(self, det_threshold: float = 0.5, det_size: int = 1280, upsample: int = 1,
                 cnn: bool = False, descriptor_process: bool = True,
                 descriptor_processes: int | None = None):
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
        self.descriptor_process = bool(descriptor_process)
        self._facerec = None                    # in-process descriptor, loaded when first used
        # descriptor children: one per CPU this worker is given (``threads``; default: the
        # machine's, at most 2), since the descriptor is ~2/3 of the CPU work at stride 4
        n = descriptor_processes or min(2, os.cpu_count() or 1)
        self._procs: list[DescriptorProcess | None] = [None] * max(1, int(n))
        self._load = [0] * len(self._procs)    # faces submitted to each, results not yet taken
        self._lock = threading.RLock()          # align (detect thread) and embed (embed thread)
        self._ahead: collections.deque = collections.deque()   # (digest, job, row), submit order
        self._ahead_digests: collections.Counter = collections.Counter()
        self._job_left: dict[tuple, int] = {}   # (child, job) -> its faces in _ahead or being taken
        self._job_result: dict[tuple, np.ndarray] = {}
        self._job_size: dict[tuple, int] = {}
        self._shape_cache: dict = {}            # id(frame) -> (weakref, {box bytes: 68-pt shape})
        if self.descriptor_process:
            self._descriptors()                 # start now: a child that cannot start fails here

    @property
    def facerec(self):
        if self._facerec is None:
            self._facerec = self._dlib.face_recognition_model_v1(self.embedder_path)
        return self._facerec

    def _descriptors(self) -> list[DescriptorProcess]:
        """The live descriptor processes. One that died raises ``ChildDied`` once, to the call
        that meets it (the title fails loudly); the next call starts a new one. Faces handed
        ahead are forgotten then (embed computes them again)."""
        for k, proc in enumerate(self._procs):
            if proc is not None and not proc.alive:
                try:
                    proc.check()                # raises, with the exit code
                finally:
                    self._retire(k, proc)
        for k, proc in enumerate(self._procs):
            if proc is None:
                self._procs[k] = proc = DescriptorProcess(self.embedder_path, self.crop_size)
                self._load[k] = 0
                weakref.finalize(self, proc.close)
        return self._procs

    @property
    def descriptor_pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None]

    def _retire(self, k: int, proc: DescriptorProcess) -> None:
        """Child k died (its error is being raised): drop it and everything handed ahead."""
        with self._lock:
            if self._procs[k] is proc:
                self._procs[k] = None
                self._forget_ahead()
        proc.close()

    def _submit(self, chips: np.ndarray) -> tuple:
        """Hand chips to the least loaded child -> (child index, job)."""
        procs = self._descriptors()
        k = min(range(len(procs)), key=self._load.__getitem__)
        self._load[k] += len(chips)
        try:
            return k, procs[k].submit(chips)
        except ChildDied:
            self._retire(k, procs[k])
            raise

    def _result(self, key: tuple) -> np.ndarray:
        k, job = key
        proc = self._procs[k]
        if proc is None:
            raise ChildDied(f"dlib descriptor job {key}: its process is gone")
        try:
            res = proc.result(job)              # waits (outside the lock)
        except ChildDied:
            self._retire(k, proc)
            raise
        with self._lock:
            self._load[k] -= len(res)
        return res

    def close(self) -> None:
        """Stop the descriptor processes (also done when the backend is collected or at exit)."""
        with self._lock:
            for k, proc in enumerate(self._procs):
                if proc is not None:
                    proc.close()
                    self._procs[k] = None
            self._forget_ahead()

    def _forget_ahead(self) -> None:
        self._ahead.clear()
        self._ahead_digests.clear()
        self._job_left.clear()
        self._job_result.clear()
        self._job_size.clear()

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
        chips = np.stack([np.asarray(c) for c in chips])
        if self.descriptor_process:
            self._hand_ahead(chips)
        return chips

    # -- descriptors: handed to the child process by align, collected by embed ---------------

    @staticmethod
    def _digest(chip: np.ndarray) -> bytes:
        return hashlib.blake2b(np.ascontiguousarray(chip).data, digest_size=16).digest()

    def _hand_ahead(self, chips: np.ndarray) -> None:
        with self._lock:
            if len(self._ahead) + len(chips) > self.max_ahead:
                return                  # nobody is taking them: embed computes on the spot
            job = self._submit(chips)
            self._job_left[job] = self._job_size[job] = len(chips)
            for row, chip in enumerate(chips):
                d = self._digest(chip)
                self._ahead.append((d, job, row))
                self._ahead_digests[d] += 1

    def _take_ahead(self, digests: list[bytes]) -> list:
        """(job, row) or None per chip, taken from the chips align handed over, in order. An
        earlier chip skipped over was aligned but never embedded: its job is let go."""
        taken = []
        for d in digests:
            if not self._ahead_digests[d]:
                taken.append(None)
                continue
            while True:
                dd, job, row = self._ahead.popleft()
                self._ahead_digests[dd] -= 1
                if dd == d:
                    taken.append((job, row))
                    break
                self._release(job)
        return taken

    def _release(self, job: tuple) -> None:
        if job not in self._job_left:           # forgotten with a process that died
            return
        self._job_left[job] -= 1
        if self._job_left[job] == 0:
            del self._job_left[job]
            k, j = job
            if self._job_result.pop(job, None) is None and self._procs[k] is not None:
                self._procs[k].discard(j)       # never fetched: drop it when it comes
                self._load[k] -= self._job_size.get(job, 0)
            self._job_size.pop(job, None)

    def _embed(self, crops: np.ndarray) -> np.ndarray:
        if not self.descriptor_process:
            return np.array(self.facerec.compute_face_descriptor(
                [np.ascontiguousarray(c) for c in crops]))
        crops = np.ascontiguousarray(crops)
        with self._lock:
            self._descriptors()                 # raises if one died since the last call
            taken = self._take_ahead([self._digest(c) for c in crops])
            missing = [i for i, t in enumerate(taken) if t is None]
            fresh = self._submit(crops[missing]) if missing else None
        out = np.empty((len(crops), 128), np.float64)
        if fresh is not None:
            out[missing] = self._result(fresh)
        for i, t in enumerate(taken):
            if t is None:
                continue
            job, row = t
            with self._lock:
                res = self._job_result.get(job)
            if res is None:
                res = self._result(job)         # waits; only this thread takes results
                with self._lock:
                    self._job_result[job] = res
            out[i] = res[row]
            with self._lock:
                self._release(job)
        return out
