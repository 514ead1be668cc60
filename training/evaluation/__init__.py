"""Scoring clusterings against labels: the ``evaluate`` command and its metrics.

    labels.py    identity labels (boxes or tracks, CSV) matched to a harvest's tracks
    metrics.py   WCP, NMI, B-cubed, PCR, OCI from the non-zero contingency cells (O(N) memory)
    evaluate.py  ``evaluate``: every method on labelled titles, per title and pooled, reports

May import: ``training.clustering``, ``training.registry``, ``harvest.dataset`` and
``harvest.reports``.
"""
