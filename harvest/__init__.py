"""Harvest weakly-labelled face tracks from videos: decode -> shots -> faces -> tracks -> mining
-> shards.

The packages are the layers, each importing only the ones above it in this list:

    video/     video in: readers (PyAV, decord, NVDEC), frame-exact chunked decode, shot cuts
    faces/     face backends (detect, align, embed), the model zoo, photo embedding
    title/     one title's pipeline: stages, the IoU linker, the track life cycle, quality,
               the Multi-Face miners
    dataset/   the output contract: schema, shard writer, fsspec storage, validate, the dataset
               card, inspect, takedown
    run/       running it at scale: sources, the worker (one backend per process), the Ray
               runner, Ray start-up, fault injection
    reports/   HTML and text reports of a harvest (and the galleries training draws)

Beside them: ``config.py`` (the settings every layer reads; it validates backend and reader
names against their registries), ``cli.py`` (the ``harvest`` command), ``console.py`` (every
console script's entry point), ``samples.py`` (the bundled demo titles). ``harvest`` never
imports ``training``.
"""
from harvest.dataset.schema import PIPELINE_VERSION as __version__  # noqa: F401
