"""Harvest weakly-labelled face tracks from videos: decode -> shots -> faces -> tracks -> mining
-> shards.

The packages are the layers, each importing only the ones above it in this list:

    config.py  every setting of a harvest and the pipeline version (what every layer reads);
               vectors.py: unit-normalising embeddings, the one definition; tables.py: the
               console's text tables, the one layout
    video/     video in: readers (PyAV, NVDEC), frame-exact chunked decode, shot cuts
    faces/     face backends (detect, align, embed), the model zoo, boxes, photo embedding
    miners/    Multi-Face self-supervision as pure functions: tracklets, cannot-links, hard
               negatives (the pipeline, validate and takedown share them)
    dataset/   the output contract: schema, shard writer, fsspec storage, validate, the dataset
               card, inspect, takedown
    title/     one title's pipeline: stages, the IoU linker, the track life cycle, quality
    run/       running it at scale: sources, the worker (one backend per process), the Ray
               runner, Ray start-up, fault injection
    reports/   HTML and text reports of a harvest (and the galleries training draws)
    cli.py     the ``harvest`` command; ``console.py``: every console script's entry point

Two imports run against this order, both inside a function: ``HarvestConfig`` checks backend
and reader names against the registries of ``faces`` and ``video``, and ``faces.registry``
stages a remote model pack with the dataset layer's fsspec helpers. ``samples.py`` (the bundled
demo titles) stands apart.
``harvest`` never imports ``training``.
"""
from harvest.config import PIPELINE_VERSION as __version__  # noqa: F401
