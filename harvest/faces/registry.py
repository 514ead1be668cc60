"""The one place where face backends are registered and chosen.

A backend is one class (``harvest.faces.base.FaceBackend``) that carries its own choice rule,
files and construction from the config; registering it is one line in ``_REGISTERED``. Nothing
else in the project names a backend.
"""
from __future__ import annotations

import os

from harvest.faces.base import FaceBackend, ModelFile
from harvest.faces.dlib_backend import DlibBackend
from harvest.faces.insightface_backend import InsightFaceBackend
from harvest.faces.torch_backend import TorchFaceBackend

_REGISTERED: tuple[type[FaceBackend], ...] = (TorchFaceBackend, InsightFaceBackend, DlibBackend)
BACKENDS: dict[str, type[FaceBackend]] = {cls.name: cls for cls in _REGISTERED}
AUTO = "auto"

# Where backends that load a model directory look when --models is not given.
DEFAULT_MODEL_DIRS = ("$HARVEST_MODELS", "~/.insightface/models/buffalo_l")


def choices() -> list[str]:
    """Valid ``--backend`` values."""
    return [AUTO, *BACKENDS]


def validate_name(name: str) -> None:
    if name not in choices():
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(choices())}")


def find_default_models() -> str | None:
    for raw in DEFAULT_MODEL_DIRS:
        path = os.path.expanduser(os.path.expandvars(raw))
        if "$" not in path and os.path.isdir(path):
            return path
    return None


def resolve(backend: str, models: str | None) -> tuple[str, str | None]:
    """-> (backend name, local model directory) that ``backend`` (auto or a registered name)
    means here. A remote --models URL is copied once into a local cache."""
    validate_name(backend)
    models = stage_models(models) if models else None
    if backend == AUTO:
        model_dir = models or find_default_models()
        for cls in sorted(_REGISTERED, key=lambda c: c.auto_priority):
            if cls.usable(model_dir if cls.needs_models else None):
                return cls.name, (model_dir if cls.needs_models else None)
        raise FileNotFoundError("no face backend is usable here (no model directory, no dlib models)")
    cls = BACKENDS[backend]
    if not cls.needs_models:
        return backend, None
    model_dir = models or find_default_models()
    cls.locate(model_dir)                     # raises a clear FileNotFoundError when absent
    return backend, model_dir


def default_det_stride(backend: str, models: str | None = None) -> int:
    """The detection stride ``backend`` (auto or a registered name) recommends: the one a run
    uses when no stride is given (an explicit one always wins)."""
    name = resolve(backend, models)[0] if backend == AUTO else (validate_name(backend) or backend)
    return int(BACKENDS[name].default_det_stride)


def model_files(name: str, model_dir: str | None) -> list[ModelFile]:
    """The files a backend would load, without loading it (for config hashes)."""
    return BACKENDS[name].locate(model_dir)


def load_backend(config, use_gpu: bool = False, threads: int | None = None) -> FaceBackend:
    """The backend a HarvestConfig asks for, built once per worker."""
    name, model_dir = resolve(config.backend, config.models)
    return BACKENDS[name].build(model_dir, config, use_gpu=use_gpu, threads=threads)


def stage_models(url: str) -> str:
    """Local directory for a model directory URL (remote ones are cached under ~/.cache/harvest)."""
    import hashlib

    import fsspec
    fs, path = fsspec.core.url_to_fs(url)
    from harvest.dataset.storage import is_local
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
