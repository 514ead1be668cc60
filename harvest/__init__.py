"""Harvest weakly-labelled face tracks from videos (decode -> shots -> faces -> tracks -> mining -> shards)."""
from harvest.schema import PIPELINE_VERSION as __version__  # noqa: F401
