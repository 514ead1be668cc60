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
    """Local directory for a model directory URL: a local one as it is; a remote one's ``.onnx``
    files copied once into ``~/.cache/harvest/models/<sha256(url)[:16]>``. Each process
    downloads into its own temporary directory and renames it into place, so processes that
    stage one pack at once (two workers of a node) never see or leave a partial pack; the
    first rename wins and the others drop their copy."""
    import hashlib
    import shutil

    import fsspec

    from harvest.dataset.storage import is_local, temp_name
    fs, path = fsspec.core.url_to_fs(url)
    if is_local(fs):
        return path
    parent = os.path.expanduser("~/.cache/harvest/models")
    name = hashlib.sha256(url.encode()).hexdigest()[:16]
    cache = os.path.join(parent, name)
    if os.path.isdir(cache):
        return cache
    remotes = fs.glob(path.rstrip("/") + "/*.onnx")
    if not remotes:
        raise FileNotFoundError(f"--models {url}: no .onnx model files there")
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, temp_name(name))
    os.makedirs(tmp)
    try:
        for remote in remotes:
            fs.get_file(remote, os.path.join(tmp, os.path.basename(remote)))
        try:
            os.rename(tmp, cache)
        except OSError:
            if not os.path.isdir(cache):      # not another process's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache
