"""Training adaptation heads on harvested tracks, and using them.

    registry.py      one ``HeadSpec`` per head: model, loss, sample kind, hyper-parameters,
                     how tracks are embedded, its own stopping rule
    heads/, losses/  the models and their losses, one module each
    data/            shard reading and title selection, the sample kinds (tracks, frames),
                     pools, batches, collate and the prefetch thread
    objective.py     a head's model and loss as one module (what trains and is checkpointed)
    train.py         the Ray Train loop (``fit``, ``train_loop``)
    checkpoints.py   what a run writes, resolving a run or checkpoint to one, ``load_head``
    transductive.py  a head trained on the one title it then clusters
    export.py        a head as ONNX, and a face pack with the head appended
    synthetic.py     generated titles for tests and benchmarks
    clustering/      who is in a title: the clustering methods and the ``cluster`` command
    evaluation/      scoring clusterings against labels: ``evaluate`` and its metrics
    people/          people across titles: stable ids, corrections, search, takedown
    cli.py           the ``train``, ``evaluate``, ``cluster`` and ``export-head`` commands

``training`` imports ``harvest`` (the dataset layer, reports, the face backends for export and
photos); ``harvest`` never imports ``training``.
"""
