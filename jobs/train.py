"""Entrypoint for `ray job submit --working-dir . -- python jobs/train.py ...`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training.cli import train_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(train_main())
