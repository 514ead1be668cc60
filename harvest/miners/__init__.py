"""Self-supervision miners; the pipeline runs them in this order."""
from harvest.miners.base import BaseMiner, TrackSet  # noqa: F401
from harvest.miners.cannot_link import CannotLinkMiner, adjacency, valid_links  # noqa: F401
from harvest.miners.hard_negative import HardNegativeMiner, nearest_cannot_linked  # noqa: F401
from harvest.miners.hard_positive import HardPositiveMiner, Tracklets, mine_tracklets  # noqa: F401
