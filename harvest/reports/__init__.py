"""Static HTML reports, one place for all of them: ``harvest report`` (:mod:`.title`), the
cluster galleries of ``evaluate --report`` and ``cluster --report`` (:mod:`.galleries`), and the
page machinery they and ``people export --report`` share (:mod:`.page`), and the end-of-run
text summary of ``harvest run`` (:mod:`.summary`).

A report is plain files (HTML with inline CSS, inline SVG and a few lines of inline script, and
JPEG sprites) linked by relative paths only, so it opens from disk and from an object store's
static URL; nothing is fetched from elsewhere. Everything is read and written through fsspec.

May import: the dataset layer (``harvest.dataset.schema``, ``harvest.dataset.storage``) and the
miners (a strip marks its tracklets' seeds). Never ``training``: training draws its galleries through
this package, not the other way round.
"""
