"""The output contract: what a harvest writes and everything that reads it back.

    schema.py          the shard schema, its metadata and the manifest's fields (one home)
    shard.py           the spill file and the shard writer
    storage.py         fsspec I/O: atomic writes, the manifest, records, listing shards
    validate.py        ``harvest validate``: every shard and the manifest against the contract
    card.py            the dataset card (README.md of an output)
    inspect_output.py  ``harvest inspect``: per-shard statistics
    dataset_io.py      reading the shards as one typed table (pandas, DuckDB, datasets)
    takedown.py        removing tracks from a published output, with an audit log

May import: ``harvest.config``, ``harvest.faces`` (the card names the backends) and
``harvest.miners`` (re-mining after a takedown, validating tracklets). Not ``harvest.title``
or ``harvest.run``.
"""
