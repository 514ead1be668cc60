"""The one place where face backends are registered and chosen."""
from __future__ import annotations

import os

from harvest.faces.base import FaceBackend, ModelFile
from harvest.faces.dlib_backend import DlibBackend, dlib_model_dir
from harvest.faces.insightface_backend import InsightFaceBackend, find_model_pack

BACKENDS: dict[str, type[FaceBackend]] = {
    "insightface": InsightFaceBackend,
    "dlib": DlibBackend,
}

# Where `--backend auto` looks for an insightface pack when --models is not given.
DEFAULT_MODEL_DIRS = ("$HARVEST_MODELS", "~/.insightface/models/buffalo_l")


def find_default_models() -> str | None:
    for raw in DEFAULT_MODEL_DIRS:
        path = os.path.expanduser(os.path.expandvars(raw))
        if "$" not in path and os.path.isdir(path):
            return path
    return None


def resolve(backend: str, models: str | None) -> tuple[str, str | None]:
    """-> (backend name, local model directory) that `backend` (auto|insightface|dlib) means here.
    A remote --models URL is copied once into a local cache."""
    models = stage_models(models) if models else None
    if backend == "auto":
        models = models or find_default_models()
        return ("insightface", models) if models else ("dlib", None)
    if backend == "insightface":
        models = models or find_default_models()
        if not models:
            raise FileNotFoundError("--backend insightface needs --models DIR (SCRFD + ArcFace .onnx)")
        return backend, models
    if backend in BACKENDS:
        return backend, None
    raise ValueError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")


def model_files(name: str, model_dir: str | None) -> list[ModelFile]:
    """The files a backend would load, without loading it (for config hashes)."""
    if name == "insightface":
        det, rec = find_model_pack(model_dir)
        return [ModelFile("detector", det), ModelFile("embedder", rec)]
    root = dlib_model_dir()
    return [ModelFile("detector", os.path.join(root, "shape_predictor_68_face_landmarks.dat")),
            ModelFile("embedder", os.path.join(root, "dlib_face_recognition_resnet_model_v1.dat"))]


def load_backend(backend: str, models: str | None, det_threshold: float, det_size: int,
                 use_gpu: bool = False, threads: int | None = None) -> FaceBackend:
    name, model_dir = resolve(backend, models)
    if name == "insightface":
        return InsightFaceBackend(model_dir, det_threshold=det_threshold, det_size=det_size,
                                  use_gpu=use_gpu, threads=threads)
    return BACKENDS[name](det_threshold=det_threshold)


def stage_models(url: str) -> str:
    """Local directory for a model directory URL (remote ones are cached under ~/.cache/harvest)."""
    import hashlib

    import fsspec
    fs, path = fsspec.core.url_to_fs(url)
    from harvest.storage import is_local
    if is_local(fs):
        return path
    cache = os.path.join(os.path.expanduser("~/.cache/harvest/models"),
                         hashlib.sha256(url.encode()).hexdigest()[:16])
    if not os.path.isdir(cache):
        tmp = cache + ".partial"
        os.makedirs(tmp, exist_ok=True)
        for remote in fs.glob(path.rstrip("/") + "/*.onnx"):
            fs.get_file(remote, os.path.join(tmp, os.path.basename(remote)))
        os.replace(tmp, cache)
    return cache
