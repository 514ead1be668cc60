"""Entrypoint for `ray job submit --working-dir . -- python jobs/harvest.py run --input ... --output ...`
(equivalent to the `harvest` console script)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harvest.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
