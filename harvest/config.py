"""Every tunable of a harvest, with its default, in one place.

``HarvestConfig`` holds what changes the content of a shard; its hash decides whether a title
already done must be redone. ``RunOptions`` holds how the run is executed (workers, timeouts,
batching) and never changes a shard's content.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from harvest.schema import CROP_MODES, PIPELINE_VERSION


@dataclass(frozen=True)
class HarvestConfig:
    backend: str = "auto"            # auto | a name in harvest.faces.registry
    models: str | None = None        # model directory (insightface); None: search defaults
    det_stride: int = 1              # run the detector every det_stride frames (`harvest run`
                                     # without --det-stride: the backend's default_det_stride)
    det_size: int = 640              # detector input side (insightface) / max side (dlib)
    det_threshold: float = 0.5       # minimum detector score
    min_face_size: float = 0.0       # drop detections smaller than this (sqrt area, px)
    shot_threshold: float = 27.0     # content change (0..255 HSV scale) that starts a shot
    min_shot_frames: int = 8         # minimum frames between two cuts
    iou_threshold: float = 0.3       # IoU needed to extend a track
    max_gap_seconds: float = 0.5     # longest gap inside a track
    min_track_seconds: float = 1.0   # shorter tracks are kept but is_valid=false (paper: 1 s)
    quality_mad_k: float = 2.7       # tracks with quality < mean - k*MAD are invalid
    crops: str = "sample"            # face crops in the shard: none | sample | all
    crops_per_track: int = 16        # sample: evenly spread crops per track (+ tracklet seeds)

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
    workers: int | None = None        # Ray actors; None: one per `cpus_per_worker` CPUs
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    titles_per_worker: int = 1        # titles one worker harvests at once, sharing its models
    title_timeout: float = 3600.0     # seconds before a title is declared hung and killed
    max_attempts: int = 3             # tries per title when its actor/worker/node dies
    start_timeout: float = 600.0      # seconds an actor may take to start (node launch, models)
    chunk_frames: int = 32            # frames decoded per contiguous chunk
    decoder: str = "auto"             # frame reader (harvest.readers): auto, nvdec or pyav
    det_batch: int | None = None      # frames per detector call (None: the backend's choice)
    embed_batch: int | None = None    # aligned faces per embedder call (None: the backend's)
    pipelined: bool = True            # overlap decode / detect / embed in threads
    retry_failed: bool = True
    progress: bool = True
    scratch_dir: str | None = None    # where remote videos are staged
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.titles_per_worker < 1:
            raise ValueError("titles_per_worker must be >= 1")
        from harvest.readers import validate_name
        validate_name(self.decoder)
