"""Entrypoint for `ray job submit --working-dir . -- python jobs/harvest.py run --input ... --output ...`
(equivalent to the `harvest` console script)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harvest.console import run  # noqa: E402

if __name__ == "__main__":
    run("harvest.cli", "main")      # ends the process with the command's status
