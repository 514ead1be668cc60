"""A worker holds one loaded face backend and turns sources into shards plus manifest records.

``TitleWorker.process`` never raises for bad input: a failed title is a record with status
"failed" and a readable error (video2dataset style). It is a plain class; the runner wraps it in a
Ray actor so models load once per worker process.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import glob
import os
import time
import traceback

from harvest.dataset import storage
from harvest.config import HarvestConfig, RunOptions, model_digest
from harvest.video.decode import DecodeError
from harvest.faces.base import file_sha256
from harvest.faces.registry import load_backend, model_files, resolve, stage_models
from harvest.run.faults import backend_here, maybe_hang
from harvest.title.pipeline import harvest_title
from harvest.config import PIPELINE_VERSION
from harvest.dataset.schema import STATUS_DONE, STATUS_FAILED
from harvest.dataset.shard import warm_up
from harvest.run.sources import Source, staged


def config_hash(config: HarvestConfig, files: list | None = None,
                backend: str | None = None) -> tuple[str, str]:
    """-> (backend actually used, hash of config + backend + model file digests).
    ``files``/``backend`` of an already loaded backend avoid routing the model files again.
    It says what ran, so it depends on the node (``auto`` means torch on a GPU node)."""
    if files is None:
        backend, model_dir = resolve(config.backend, config.models)
        files = model_files(backend, model_dir)
    return backend, config.content_hash(backend, model_digest(m.sha256 for m in files))


def requested_config_hash(config: HarvestConfig) -> str:
    """Hash of the config as the user gave it: the backend as asked for (``auto`` included) and
    the digests of the ``--models`` pack's ``.onnx`` files when one is named. It resolves
    nothing, so a CPU head and a GPU worker agree on it: resume compares it (``plan_run``)."""
    files = []
    if config.models:
        pack = stage_models(config.models)      # a remote pack: the local copy (made once)
        files = sorted(glob.glob(os.path.join(pack, "*.onnx")))
    return config.content_hash(config.backend, model_digest(file_sha256(f) for f in files))


def new_record(source: Source, cfg_hash: str, backend: str, requested_hash: str) -> dict:
    return {"title_id": source.title_id, "source": source.uri, "status": STATUS_FAILED,
            "error": None, "shard_path": None, "shard_sha256": None, "frames": 0, "faces": 0,
            "tracks": 0, "valid_tracks": 0, "cannot_link_pairs": 0, "seconds": 0.0,
            "config_hash": cfg_hash, "backend": backend,
            "requested_config_hash": requested_hash, "pipeline_version": PIPELINE_VERSION,
            "finished_at": None}


def finish(record: dict, error: str | None, started: float) -> dict:
    record["error"] = error
    record["seconds"] = round(time.perf_counter() - started, 3)
    record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return record


def use_jemalloc() -> str:
    """Make Arrow's jemalloc pool this process's default, unless ``ARROW_DEFAULT_MEMORY_POOL``
    names one or this pyarrow has no jemalloc; -> the pool now in use. Measured on a worker
    harvesting 5- and 20-minute titles (``bench/long_title.py --pools mimalloc jemalloc``):
    peak RSS 868 and 936 MB against 929 and 987 MB under pyarrow's default, mimalloc, at the
    same speed (docs/benchmarks.md). Buffers made before the switch go back to the pool they
    came from."""
    import pyarrow as pa
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:            # a pyarrow built without jemalloc
            pass
    return pa.default_memory_pool().backend_name


class TitleWorker:
    def __init__(self, output_url: str, config: HarvestConfig, options: RunOptions | None = None,
                 threads: int | None = None):
        use_jemalloc()
        self.config = config
        self.options = options or RunOptions()
        self.fs, self.root = storage.open_fs(output_url)
        here = dataclasses.replace(config, backend=backend_here(config.backend))
        self.backend = load_backend(here, use_gpu=self.options.gpus_per_worker > 0,
                                    threads=threads)
        self.backend_name, self.config_hash = config_hash(
            config, self.backend.model_files, self.backend.name)
        self.requested_hash = requested_config_hash(config)
        self.positions: dict = {}       # title_id -> progress of each title running here
        warm_up()       # load the shard writer's libraries now (flat RSS over a title)

    def track_progress(self, source: Source):
        """An ``on_progress`` for ``harvest_title`` that keeps ``self.positions[title_id]``
        current (read from another thread by the runner's actor; a worker may harvest several
        titles at once): title_id, frames, total, fps."""
        started = time.perf_counter()
        tid = source.title_id
        self.positions[tid] = {"title_id": tid, "frames": 0, "total": 0, "fps": 0.0}

        def update(frames: int, total: int) -> None:
            elapsed = time.perf_counter() - started
            self.positions[tid] = {"title_id": tid, "frames": int(frames),
                                   "total": int(total or 0),
                                   "fps": round(frames / elapsed, 2) if elapsed > 0 else 0.0}
        return update

    def progress(self, title_id: str) -> dict | None:
        """Where the running title ``title_id`` is (None when it is not running here)."""
        return self.positions.get(title_id)

    def metadata(self, source: Source, result) -> dict:
        files = {m.role: m for m in self.backend.model_files}
        return {
            "title_id": source.title_id, "source_uri": source.uri, "fps": result.info.fps,
            "width": result.info.width, "height": result.info.height,
            "frame_count": result.frames, "reported_frames": result.info.reported_frames,
            # decode geometry: width/height are the display frame boxes refer to (rotation applied,
            # square pixels); coded size, rotation and SAR map them back to the stored frames
            "codec": result.info.codec, "pix_fmt": result.info.pix_fmt,
            "coded_width": result.info.coded_width, "coded_height": result.info.coded_height,
            "rotation": result.info.rotation, "sample_aspect_ratio": result.info.sample_aspect_ratio,
            "time_base": result.info.time_base, "interlaced": result.info.interlaced,
            "decoder": result.decoder, "decoder_fallback": result.decoder_fallback,
            "backend": self.backend_name,
            "detector_file": files["detector"].name, "detector_sha256": files["detector"].sha256,
            "embedder_file": files["embedder"].name, "embedder_sha256": files["embedder"].sha256,
            "config_hash": self.config_hash, "requested_config_hash": self.requested_hash,
            "shot_boundaries": result.shot_boundaries,
            "crop_size": self.backend.crop_size,
            **self.config.settings(),        # det_stride, min_track_seconds, crops, ... (all of them)
        }

    def process(self, source: Source) -> dict:
        started = time.perf_counter()
        record = new_record(source, self.config_hash, self.backend_name, self.requested_hash)
        try:
            maybe_hang(source.uri)
            with staged(source.uri, self.options.scratch_dir) as local:
                result = harvest_title(local, self.backend, self.config, self.options,
                                       on_progress=self.track_progress(source))
            with result.tracks as tracks:      # removes the title's scratch files
                local_shard = tracks.write_shard(source.title_id, self.metadata(source, result))
                path, sha = storage.put_shard_file(self.fs, self.root, local_shard)
            record.update(status=STATUS_DONE, shard_path=path, shard_sha256=sha,
                          frames=result.frames, faces=tracks.faces, tracks=len(tracks),
                          valid_tracks=tracks.valid_tracks,
                          cannot_link_pairs=tracks.cannot_link_pairs)
            error = None
        except Exception as exc:  # noqa: BLE001 - every failure becomes a manifest row
            error = f"{type(exc).__name__}: {exc}".strip()
            if not _is_expected(exc):
                error += "\n" + traceback.format_exc(limit=4)
        finally:
            self.positions.pop(source.title_id, None)
        record = finish(record, error, started)
        storage.write_record(self.fs, self.root, record)
        return record


def _is_expected(exc: Exception) -> bool:
    """Bad input, not a bug: the error line alone is enough (no traceback in the manifest)."""
    return isinstance(exc, (DecodeError, FileNotFoundError, PermissionError))
