"""One title's pipeline, as a plain function (``pipeline.harvest_title``), no Ray.

    pipeline.py  the stage types and stages (decode, detect + align, embed) and harvest_title
    stages.py    running a list of generator stages inline or as threads, with stage times
    tracking.py  the IoU track linker (which track a face joins) and box interpolation
    tracks.py    the track life cycle: open faces, closing a track, the title's end
    quality.py   face and track quality, outlier tracks

May import: ``harvest.config``, ``harvest.video``, ``harvest.faces``, ``harvest.miners`` and, to
write a title's rows, ``harvest.dataset.schema`` / ``harvest.dataset.shard``. Not ``harvest.run``.
"""
