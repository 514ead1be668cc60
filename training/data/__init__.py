"""Shards -> per-head training samples and batches, one title group at a time.

Nothing here reads a whole corpus. The driver lists shards and reads only their footers
(:func:`shard_info`: title, D, track count) to split titles (:func:`split_titles`) and deal
them to workers (:func:`deal_titles`, balanced by track count, reshuffled every epoch). A worker
streams its titles (:func:`read_title`: one shard, its kind's columns, read one ahead),
turns each title group into samples (:func:`build_samples`: the hard negative and cannot-link
partners are always in the same title) and cuts batches (:func:`stream_batches`), holding at
most one title plus a small pool of samples. A :class:`SampleKind` (named by the registry;
:data:`SAMPLE_KINDS` maps its name to it) carries what a head needs as callables: its per-title
sample builder, its batcher and its collate function. Arrays of the track kinds:

    views     (n, 3, D) float32  anchor, p1, p2 tracklets              (all kinds)
    negative  (n, D)    float32  hard negative's anchor tracklet       (triplets)
    labels    (n,)      int64    cluster id: own index or identity     (clusters)
    cl_ptr, cl_idx      CSR of cannot-link partners as sample indices  (clusters, weak mode)
    title     (n,)      int64    title index; ``track_id``, ``first_frame`` (n,) int64

The frame kinds (SSiam/TSiam, :func:`frames_kind`) read the per-face ``embeddings`` of one
title's valid tracks: ``x`` (F, D) faces, ``track`` (F,) track row of each face, ``means``
(T, D); each batch draws ``draw`` faces of the title and its collate mines the pairs (from the
title's :class:`~training.losses.siamese_miners.FaceDistances` and neighbour lists, made once
per title).

Speed (docs/benchmarks.md, "Training data path"): no per-track Python. Columns are decoded
from the Arrow buffers by numpy (fixed-size lists as zero-copy (n, 3, D) views, list columns by
their offsets), track keys are matched by sorting (:func:`locate`), each kind reads only its
columns (ImpTriplet's ``mean_embedding`` only for titles whose hard negatives need it), a pool
merges title groups by index (:class:`Rows`, no copy: ImpTriplet's negatives too) and a batch's rows are copied
once, by its collate. ``training.train.worker_batches`` runs all of it in a prefetch thread
(:func:`prefetched`) ahead of the training step.

Modules: ``shards`` (reading and title selection), ``decode`` (Arrow to numpy), ``samples``
(samples, kinds and their registry), ``batching`` (pools, batches, collate, prefetch),
``tracks`` (the track kinds), ``frames`` (the frame kinds). The names imported here are the
package's interface.
"""
from training.data.batching import (SHUFFLE_BATCHES, Collated, collate, collated,  # noqa: F401
                                    concat_samples, pooled_batches, prefetched, stream_batches,
                                    take)
from training.data.decode import faces_of, float_vectors  # noqa: F401
from training.data.frames import (FRAME_COLUMNS, SSIAM_FRAMES, TSIAM_FRAMES,  # noqa: F401
                                  FrameKind, frames_kind)
from training.data.samples import (SAMPLE_KINDS, Rows, SampleKind, Samples,  # noqa: F401
                                   build_samples, register_kind, sample_kind)
from training.data.shards import (READ_AHEAD, Columns, deal_titles, iter_titles,  # noqa: F401
                                  list_shards, read_title, resolve_titles, shard_info,
                                  source_name, split_titles, title_hash)
from training.data.tracks import (CLUSTERS, TRIPLETS, VIEW_COLUMNS, VIEWS,  # noqa: F401
                                  build_clusters, build_triplets, build_views, means_needed)
