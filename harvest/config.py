"""Every tunable of a harvest, with its default, in one place.

``HarvestConfig`` holds what changes the content of a shard; its hash decides whether a title
already done must be redone. ``RunOptions`` holds how the run is executed (workers, timeouts,
batching) and never changes a shard's content. Each setting carries its help text
(``help_of``): `harvest run`'s options take their defaults and help from here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

#: the version of the code that shapes a shard: in every shard's metadata and config hash
PIPELINE_VERSION = "1.4.0"
#: what ``HarvestConfig.crops`` may be: no face crops, a sample per track, or every face's
CROP_MODES = ("none", "sample", "all")


def _opt(default, help: str):
    """A setting's default and its help text (shown by the command-line options)."""
    return field(default=default, metadata={"help": help})


def help_of(cls, name: str) -> str:
    """The help text of setting ``name`` of ``cls`` (a dataclass of this module)."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def model_digest(shas) -> str:
    """The digest of a backend's model files (their sha256 values, in the backend's order) that
    enters the config hash (``HarvestConfig.content_hash``): the one rule, for the worker that
    hashes the files it loaded and for the card that re-checks a recorded hash."""
    return hashlib.sha256("".join(shas).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HarvestConfig:
    backend: str = _opt("auto", "face backend: auto (the first usable one) or a name in "
                                "harvest.faces.registry")
    models: str | None = _opt(None, "directory or URL with one SCRFD detector and one "
                                    "ArcFace-format recogniser .onnx (torch and insightface "
                                    "backends; default: the usual places are searched)")
    det_stride: int = _opt(1, "run the detector every N frames (`harvest run` without "
                              "--det-stride: the backend's default_det_stride)")
    det_size: int = _opt(640, "detector input side in pixels (insightface) / largest frame "
                              "side detected on (dlib)")
    det_threshold: float = _opt(0.5, "minimum detector score of a face")
    min_face_size: float = _opt(0.0, "drop detections smaller than this (sqrt of box area, "
                                     "pixels)")
    shot_threshold: float = _opt(27.0, "content change (0..255 HSV scale) between frames that "
                                       "starts a new shot")
    min_shot_frames: int = _opt(8, "minimum frames between two cuts")
    iou_threshold: float = _opt(0.3, "box overlap (IoU) a detection needs to extend a track")
    max_gap_seconds: float = _opt(0.5, "longest gap without a detection inside a track, "
                                       "seconds")
    min_track_seconds: float = _opt(1.0, "shorter tracks are kept but marked is_valid=false "
                                         "(paper: 1 s)")
    quality_mad_k: float = _opt(2.7, "tracks with quality below mean - k*MAD are marked invalid")
    crops: str = _opt("sample", "aligned face crops (JPEG) stored per track: none, an even sample "
                                "of --crops-per-track plus the tracklet seeds, or all. Face "
                                "images are biometric personal data: `none` stores none")
    crops_per_track: int = _opt(16, "crops per track in `sample` mode (plus the tracklet seeds)")

    def __post_init__(self):
        from harvest.faces.registry import validate_name
        validate_name(self.backend)
        if self.det_stride < 1:
            raise ValueError("det_stride must be >= 1")
        if self.crops not in CROP_MODES:
            raise ValueError(f"crops must be one of {CROP_MODES}, got {self.crops!r}")
        if self.crops_per_track < 0:
            raise ValueError("crops_per_track must be >= 0")

    def settings(self) -> dict:
        """Every content setting except the backend choice and the model location (those are
        recorded as the backend used and its files' sha256): written into each shard's metadata."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("backend", "models")}

    def content_hash(self, resolved_backend: str, model_digest: str = "") -> str:
        """Hash of everything that shapes a shard: this config, the backend actually used,
        its model files and the pipeline version."""
        payload = dataclasses.asdict(self)
        payload.update(backend=resolved_backend, models=model_digest,
                       pipeline_version=PIPELINE_VERSION)
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class RunOptions:
    workers: int | None = _opt(None, "Ray actors (default: one per --cpus-per-worker CPUs of "
                                     "the cluster)")
    cpus_per_worker: float = _opt(1.0, "CPUs Ray reserves for each actor")
    gpus_per_worker: float = _opt(0.0, "GPUs Ray reserves for each actor (a fraction shares one)")
    titles_per_worker: int = _opt(1, "titles an actor harvests at once, sharing its loaded models "
                                     "(one GPU worker fed by several decode streams)")
    title_timeout: float = _opt(3600.0, "seconds a title may run on a live actor before it is "
                                        "declared hung and killed")
    max_attempts: int = _opt(3, "tries per title when its actor, worker process or node dies")
    start_timeout: float = _opt(600.0, "seconds an actor may take to start (node launch, model "
                                       "loading) before it is given up")
    chunk_frames: int = _opt(32, "frames decoded per contiguous chunk")
    decoder: str = _opt("auto", "frame reader: auto (NVDEC where the backend runs on a GPU and "
                                "the stream allows, else PyAV on the CPU), nvdec or pyav; "
                                "recorded per shard")
    det_batch: int | None = _opt(None, "frames per detector call (default: the backend's choice)")
    embed_batch: int | None = _opt(None, "aligned faces per embedder call (default: the "
                                         "backend's choice)")
    pipelined: bool = _opt(True, "overlap decode / detect / embed in threads")
    retry_failed: bool = _opt(True, "harvest titles that failed in an earlier run again")
    progress: bool = _opt(True, "show a progress bar on stderr")
    scratch_dir: str | None = _opt(None, "local directory for each title's temporary files "
                                         "(track spill, crops, the shard before upload) and "
                                         "staged remote videos (default: $TMPDIR)")
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.titles_per_worker < 1:
            raise ValueError("titles_per_worker must be >= 1")
        from harvest.video.readers import validate_name
        validate_name(self.decoder)
