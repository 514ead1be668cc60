"""Entrypoint for `ray job submit --working-dir . -- python jobs/train.py ...`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harvest.console import run  # noqa: E402

if __name__ == "__main__":
    run("training.cli", "train_main")      # ends the process with the command's status
