"""Video in: a title's frames, frame-exact, in contiguous chunks.

    readers.py  the reader registry (``pyav``, ``decord``, ``nvdec``; ``auto``), ``read_title``
                with its fallback from a GPU reader to the CPU one
    decode.py   chunked decode and probing; sequential PyAV numbering is the reference
    nvdec.py    the NVDEC reader (GPU nodes, optional dependency)
    shots.py    shot-cut detection on the decoded chunks

May import: ``harvest.config``. Nothing of the faces, title, dataset or run layers.
"""
