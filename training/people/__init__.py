"""People across titles (``people`` command): stable person ids for a series or a corpus.

    titles.py       one title's part of a build (a Ray task): its own clustering, its units
    link.py         the corpus step: units onto existing people, the rest into new people
    build.py        ``people build`` and the rendering every command shares
    corrections.py  name / merge / split / mark, laid over the links
    store.py        the store's files and their one reader and writer
    search.py       nearest people and tracks to a photo or a track
    remove.py       takedown through ``harvest.dataset.takedown``
    export.py       per person JSON, per title WebVTT, person pages
    cli.py          the command

May import ``harvest`` (storage, faces, takedown) and ``training`` (methods, registry, data);
nothing outside this package imports it but the console entry point.
"""
