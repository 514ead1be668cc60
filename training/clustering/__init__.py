"""Who is in a title: clustering a title's tracks, with or without a trained head.

    methods.py         the method registry (``Method``: one function + one ``register`` call)
    title_tracks.py    ``TitleTracks``, the valid tracks of one shard as methods see them, and
                       ``read_tracks``
    hac.py             agglomerative clustering (K, a height, cannot-links), affinity propagation
    finch.py           FINCH, and the first-neighbour search seam (``SEARCHES``)
    c1c.py             C1C: FINCH under must-links (a track's faces) and cannot-links
    autocluster.py     ``auto``, the default: title-adapted embedding, a cut calibrated on the
                       title's own cannot-links
    vcn.py             VideoClusterNet's formulas (methods.md 5) and defaults
    vcn_finetune.py    the ``vcn`` method: per-title fine-tuning of the recogniser on face
                       crops (torch), then the loss-as-distance clustering
    confidence.py      the calibrated per-track confidence of any clustering
    cluster_titles.py  the ``cluster`` command: one Ray task per title, outputs and report

May import: ``training.registry`` and ``training.data`` (heads and shard reading),
``training.columns``, and from ``harvest`` only the dataset layer and the reports. The training
loop never imports this package.
"""
