"""Self-supervision from the video itself (Multi-Face): the miners, as the streaming pipeline
calls them (``harvest.title.tracks.TitleTracker``).

- ``mine_tracklets``: a closed track's hard-positive tracklets, from its own faces only;
- ``valid_links``: cannot-links, from the co-occurrences the track linker recorded, restricted
  to valid tracks, at the title's end;
- ``nearest_cannot_linked``: each track's hard negative, from (T, D) track summaries.

Each works on what the pipeline holds at that point (one track's faces, or per-track summaries),
never on a whole title's faces: a title can hold 500,000. The whole-title definitions they are
tested against live with the tests (``tests/miner_reference.py``).
"""
from harvest.miners.cannot_link import valid_links  # noqa: F401
from harvest.miners.hard_negative import nearest_cannot_linked  # noqa: F401
from harvest.miners.hard_positive import Tracklets, mine_tracklets  # noqa: F401
