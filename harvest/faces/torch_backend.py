"""torch backend: the same SCRFD + ArcFace-format ONNX pair as ``insightface``, run as torch
modules built from the ONNX files (``harvest.faces.onnx_torch``), device-agnostic.

On a GPU everything after the upload runs on the device: resize + pad + normalise, the batched
networks in fp16, SCRFD box/keypoint decoding, the score cut and NMS, and the 5-point alignment
as one batched ``grid_sample`` warp. On CPU it runs the same code in float32 (that is how CI
tests it); onnxruntime (``insightface`` backend) is faster on CPU, so ``auto`` only chooses this
backend when CUDA is available.

Numerical agreement with the onnxruntime backend (same detections, same embeddings, same tracks)
is tested on ``crowd.mp4`` in tests/test_torch_backend.py, and so is reduced precision: the same
conversion in bfloat16 on CPU against float32 (``harvest.faces.agreement``; the networks' output
layers stay float32, ``OnnxModule.reduce_precision``). bench/gpu_acceptance.py compares CUDA fp16
with CPU fp32 the same way on a GPU machine.
"""
from __future__ import annotations

import os

import numpy as np

from harvest.faces.align import similarity_transforms
from harvest.faces.base import Detections, DetectorInput
from harvest.faces.insightface_backend import OnnxPackBackend, find_model_pack

_MAX_CANDIDATES = 4000      # per image, before NMS (highest scores kept)
PRECISIONS = ("fp32", "fp16", "bf16")     # the networks' dtype (decoding and NMS stay fp32)


def _device(use_gpu: bool):
    import torch
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def convert_onnx(path: str, device=None, dtype=None):
    """ONNX file -> torch module in eval mode (the one place the conversion happens), on
    ``device``; a reduced ``dtype`` (float16 / bfloat16) casts all but the output layers, which
    stay float32 (``OnnxModule.reduce_precision``)."""
    import torch
    from harvest.faces.onnx_torch import OnnxModule
    module = OnnxModule(path).eval().to(device)
    if dtype is not None and dtype != torch.float32:
        module.reduce_precision(dtype)
    return module


class TorchFaceBackend(OnnxPackBackend):
    name = "torch"
    auto_priority = 5           # first choice where a GPU is present (see ``usable``)

    @classmethod
    def usable(cls, model_dir: str | None) -> bool:
        """Chosen by ``auto`` only where a CUDA device is visible. The NVIDIA device files are
        checked first, so a CPU worker never imports torch just to find out (torch alone adds
        ~0.7 GB to a worker's RSS)."""
        import importlib.util
        if not model_dir or importlib.util.find_spec("onnx") is None:
            return False
        if not os.path.exists("/dev/nvidiactl") or os.environ.get("CUDA_VISIBLE_DEVICES") == "":
            return False
        import torch
        return torch.cuda.is_available()

    @classmethod
    def build(cls, model_dir, config, *, use_gpu=False, threads=None) -> "TorchFaceBackend":
        # a Ray worker without a reserved GPU sees no CUDA device, so "use one if visible" is safe
        return cls(model_dir, det_threshold=config.det_threshold, det_size=config.det_size,
                   use_gpu=True, threads=threads)

    def __init__(self, model_dir: str, det_threshold: float = 0.5, det_size: int = 640,
                 nms_threshold: float = 0.4, use_gpu: bool = False, threads: int | None = None,
                 precision: str | None = None):
        """``precision``: the networks' dtype, one of ``PRECISIONS`` (default fp16 on a GPU,
        fp32 on CPU; CPU kernels exist for all three, so CI tests reduced precision there)."""
        super().__init__(det_threshold, det_size)
        import onnx
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.detector_path, self.embedder_path = find_model_pack(model_dir)
        self.device = _device(use_gpu)
        self.precision = precision or ("fp16" if self.device.type == "cuda" else "fp32")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16,
                      "bf16": torch.bfloat16}[self.precision]
        self.nms_threshold = float(nms_threshold)

        det_graph = onnx.load(self.detector_path).graph
        n_out = len(det_graph.output)
        # SCRFD export layouts (as insightface.model_zoo.scrfd reads them)
        self.fmc, self.strides, self.num_anchors, self.use_kps = {
            6: (3, (8, 16, 32), 2, False), 9: (3, (8, 16, 32), 2, True),
            10: (5, (8, 16, 32, 64, 128), 1, False), 15: (5, (8, 16, 32, 64, 128), 1, True),
        }[n_out]
        if not self.use_kps:
            raise ValueError(f"{self.detector_path}: SCRFD without keypoints cannot align faces")
        dims = det_graph.input[0].type.tensor_type.shape.dim
        fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims[2:]]
        self._fixed_input = tuple(fixed) if all(fixed) else None
        self._fixed_batch = dims[0].HasField("dim_value") and dims[0].dim_value > 0
        if self._fixed_input:
            self.det_size = max(self._fixed_input)
        self.detector = convert_onnx(self.detector_path, self.device, self.dtype)
        self.recognizer = convert_onnx(self.embedder_path, self.device, self.dtype)
        with torch.inference_mode():
            probe = torch.zeros(1, 3, 112, 112, device=self.device, dtype=self.dtype)
            self._dim = int(self.recognizer(probe).reshape(1, -1).shape[1])
        self._centers: dict = {}

    @property
    def preferred_batches(self) -> tuple[int, int]:
        """64 frames and 256 faces per call on a GPU (SCRFD-2.5G fp16 reaches ~6,700 images/s at
        batch 64 against ~170 at batch 1 on an H100, as reported in issue #8; not measured here),
        8 and 64 on CPU."""
        return (64, 256) if self.device.type == "cuda" else (8, 64)

    @property
    def frame_device(self):
        """Frames come as uint8 tensors on this backend's device (decoded there by NVDEC or
        uploaded by the CPU reader's decode thread); on CPU the same tensor path runs in CI."""
        return self.device

    # -- detection ------------------------------------------------------------------------
    def _to_device(self, frames) -> "torch.Tensor":
        """list of (H, W, 3) uint8 numpy (or one (N, H, W, 3) uint8 tensor, e.g. decoded on the
        device by a GPU decoder) -> (N, 3, H, W) uint8 on the device."""
        import torch
        if isinstance(frames, torch.Tensor):
            x = frames.to(self.device, non_blocking=True)
        else:
            x = torch.from_numpy(np.stack(frames))
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
        return x.permute(0, 3, 1, 2)

    def _anchor_centers(self, ih: int, iw: int, stride: int):
        import torch
        key = (ih, iw, stride)
        if key not in self._centers:
            h, w = ih // stride, iw // stride
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            c = torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() * stride
            self._centers[key] = c.repeat_interleave(self.num_anchors, dim=0).to(self.device)
        return self._centers[key]

    def _prepare(self, frame) -> DetectorInput:
        """One frame -> its (3, nh, nw) uint8 resize on the device (bilinear, rounded), the
        padding to the detector's input left to ``_detect``: the frame is converted to float
        one at a time here, never a whole batch of full frames."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = self._to_device(frame[None] if isinstance(frame, torch.Tensor) else [frame])
            _, _, h, w = x.shape
            ih, iw = self.input_shape(h, w)
            scale = min(iw / w, ih / h)
            nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
            small = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False)
            return DetectorInput(small[0].round().clamp(0, 255).to(torch.uint8), scale, (ih, iw))

    def _detect(self, inputs: list[DetectorInput]) -> list[Detections]:
        import torch

        with torch.inference_mode():
            small = torch.stack([p.image for p in inputs])
            n, _, nh, nw = small.shape
            (ih, iw), scale = inputs[0].shape, inputs[0].scale
            blob = torch.zeros(n, 3, ih, iw, device=self.device, dtype=torch.float32)
            blob[:, :, :nh, :nw] = (small.float() - 127.5) / 128.0
            blob = blob.to(self.dtype)
            if self._fixed_batch:
                per = [self.detector(blob[i:i + 1]) for i in range(n)]
                outs = [torch.cat([p[k] for p in per]) for k in range(len(per[0]))]
            else:
                outs = list(self.detector(blob))
            return self._decode_batch([o.float() for o in outs], n, scale, (ih, iw))

    def _decode_batch(self, outs: list, n: int, scale: float, shape: tuple[int, int]) -> list[Detections]:
        """SCRFD outputs of n images -> n Detections, with a fixed number of host syncs per
        batch (not per image): the score cut, box and keypoint decoding of every image at once,
        NMS of every image at once (``_nms_padded``), one copy of the kept faces to the host."""
        import torch
        fmc = self.fmc
        img_l, scores_l, boxes_l, kps_l = [], [], [], []
        for level, stride in enumerate(self.strides):
            scores = outs[level].reshape(n, -1)
            img, anchor = torch.nonzero(scores >= self.det_threshold, as_tuple=True)
            if img.numel() == 0:
                continue
            centers = self._anchor_centers(*shape, stride)[anchor]
            d = outs[level + fmc].reshape(n, -1, 4)[img, anchor] * stride
            boxes_l.append(torch.cat([centers - d[:, :2], centers + d[:, 2:]], dim=1))
            k = outs[level + 2 * fmc].reshape(n, -1, 10)[img, anchor] * stride
            kps_l.append(centers.repeat(1, 5) + k)
            scores_l.append(scores[img, anchor])
            img_l.append(img)
        if not scores_l:
            return [Detections.empty() for _ in range(n)]
        img, scores = torch.cat(img_l), torch.cat(scores_l)
        boxes, kps = torch.cat(boxes_l) / scale, torch.cat(kps_l) / scale
        # by image, then by score (descending, stable: the order a per-image sort gives)
        order = torch.argsort(scores, descending=True, stable=True)
        order = order[torch.argsort(img[order], stable=True)]
        img_o = img[order]
        rank = torch.arange(len(order), device=order.device) - \
            torch.searchsorted(img_o, img_o, side="left")            # place within its image
        cut = rank < _MAX_CANDIDATES
        order, img_o, rank = order[cut], img_o[cut], rank[cut]
        k = int(rank.max()) + 1
        padded = boxes.new_zeros((n, k, 4))
        padded[img_o, rank] = boxes[order]
        valid = torch.zeros((n, k), dtype=torch.bool, device=boxes.device)
        valid[img_o, rank] = True
        alive = _nms_padded(padded, valid, self.nms_threshold)
        keep = order[torch.as_tensor(alive[img_o.cpu().numpy(), rank.cpu().numpy()],
                                     device=order.device)]
        img_k = img[keep].cpu().numpy()
        boxes_k = boxes[keep].cpu().numpy().astype(np.float32)
        kps_k = kps[keep].reshape(-1, 5, 2).cpu().numpy().astype(np.float32)
        scores_k = scores[keep].cpu().numpy().astype(np.float32)
        out = []
        for i in range(n):
            m = img_k == i
            out.append(Detections(boxes_k[m], kps_k[m], scores_k[m]) if m.any() else Detections.empty())
        return out

    # -- alignment and embedding -----------------------------------------------------------
    def _align(self, frame, dets: Detections) -> np.ndarray:
        import torch
        crops = self.align_on_device(self._to_device([frame]) if isinstance(frame, np.ndarray)
                                     else frame.to(self.device).unsqueeze(0).permute(0, 3, 1, 2),
                                     dets.kps)
        return crops.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).cpu().numpy()

    def align_on_device(self, frame_nchw, kps: np.ndarray):
        """(1, 3, H, W) uint8 frame on the device + (n, 5, 2) landmarks -> (n, 3, S, S) float
        crops on the device: one batched bilinear warp (zeros outside the frame, like
        cv2.warpAffine with borderValue 0)."""
        import torch
        import torch.nn.functional as F
        S = self.crop_size
        _, _, H, W = frame_nchw.shape
        M = similarity_transforms(kps, S)                        # source -> crop, (n, 2, 3)
        A = np.concatenate([M, np.tile([[[0.0, 0.0, 1.0]]], (len(M), 1, 1))], axis=1)
        inv = np.linalg.inv(A)[:, :2]                             # crop -> source pixels
        # affine_grid works in normalised coordinates (align_corners=False): map crop [-1, 1]
        # to crop pixels, through inv, to source pixels, to source [-1, 1]
        to_px = np.array([[S / 2, 0, S / 2 - 0.5], [0, S / 2, S / 2 - 0.5], [0, 0, 1]])
        from_px = np.array([[2 / W, 0, 1 / W - 1], [0, 2 / H, 1 / H - 1], [0, 0, 1]])
        theta = np.einsum("ij,njk,kl->nil", from_px, np.concatenate(
            [inv, np.tile([[[0.0, 0.0, 1.0]]], (len(inv), 1, 1))], axis=1), to_px)[:, :2]
        theta_t = torch.as_tensor(theta, dtype=torch.float32, device=frame_nchw.device)
        grid = F.affine_grid(theta_t, (len(M), 3, S, S), align_corners=False)
        src = frame_nchw.float().expand(len(M), -1, -1, -1)
        return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _embed(self, crops: np.ndarray) -> np.ndarray:
        import torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).permute(0, 3, 1, 2)
            x = ((x.float() - 127.5) / 127.5).to(self.dtype)
            return self.recognizer(x).reshape(len(crops), -1).float().cpu().numpy()


def _nms(boxes, threshold: float):
    """Greedy NMS with insightface's +1 pixel area convention. boxes (K, 4) sorted by score
    (descending), on any device -> indices kept (ascending = by score)."""
    import torch
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    valid = torch.ones((1, len(boxes)), dtype=torch.bool, device=boxes.device)
    keep = np.flatnonzero(_nms_padded(boxes[None], valid, threshold)[0])
    return torch.as_tensor(keep, dtype=torch.long, device=boxes.device)


_NMS_CELLS = 2**24          # overlap cells computed at once (~20 bytes each on the device)


def _nms_padded(boxes, valid, threshold: float) -> np.ndarray:
    """Greedy NMS of n images at once. boxes (n, K, 4) on any device, each image's rows sorted by
    score (descending), padded; valid (n, K) bool marks the real rows -> (n, K) bool numpy, the
    rows kept. Each image's K x K overlap test runs on the device (images in groups of at most
    ``_NMS_CELLS`` cells); the greedy sweep runs on the host once per rank for all images
    together (K steps, not one per box)."""
    import torch
    n, k = valid.shape
    alive = valid.cpu().numpy().copy()
    step = max(1, _NMS_CELLS // max(1, k * k))
    for s in range(0, n, step):
        b = boxes[s:s + step]
        x1, y1, x2, y2 = b.unbind(-1)
        area = (x2 - x1 + 1) * (y2 - y1 + 1)
        w = (torch.minimum(x2[:, :, None], x2[:, None]) - torch.maximum(x1[:, :, None], x1[:, None]) + 1).clamp(min=0)
        h = (torch.minimum(y2[:, :, None], y2[:, None]) - torch.maximum(y1[:, :, None], y1[:, None]) + 1).clamp(min=0)
        inter = w * h
        over = (inter / (area[:, :, None] + area[:, None] - inter) > threshold).cpu().numpy()
        a = alive[s:s + step]
        for r in range(k - 1):
            a[:, r + 1:] &= ~(over[:, r, r + 1:] & a[:, r:r + 1])
    return alive

