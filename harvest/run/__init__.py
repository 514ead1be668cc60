"""Running a harvest: from a URL of movies to shards and a manifest, on local Ray or a cluster.

    sources.py   list the videos behind an fsspec URL, name them, stage remote ones locally
    worker.py    ``TitleWorker``: one loaded backend turns sources into shards and records
    runner.py    the Ray runner: plan (resume), actors, retries of system failures, timeouts
    raystart.py  starting or joining Ray for every command that needs it
    faults.py    fault injection for tests (off unless a variable is set)

May import every other layer of ``harvest``; nothing imports it but the CLI, jobs and bench.
"""
