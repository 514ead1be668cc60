"""`people` under `ray job submit --working-dir . -- python jobs/people.py build ...`: the
titles' own clustering runs as one Ray task per title on the job's cluster."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harvest.console import run  # noqa: E402

if __name__ == "__main__":
    run("training.people.cli", "main")      # ends the process with the command's status
