"""Entrypoint for `ray job submit --working-dir . -- python jobs/cluster.py ...`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.cli import cluster_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(cluster_main())
