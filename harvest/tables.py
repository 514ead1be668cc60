"""Plain-text tables for the console, the one definition: ``harvest run``'s summary,
``harvest inspect`` and ``evaluate`` print theirs through ``text_table``."""
from __future__ import annotations

from collections.abc import Sequence

RULE = None     # a row that is this: a dashed rule under every column


def text_table(rows: Sequence[Sequence | None], right: bool = False, strip: bool = False) -> str:
    """``rows`` (the first is the header, which sets the columns) as lines of cells padded to
    their column's widest cell and joined by two spaces; a row that is ``RULE`` is a dashed rule.

    Cells print as ``str`` (``None`` as nothing); a short row is padded with empty cells.
    ``right``: right-aligned cells; ``strip``: no trailing blanks on a line."""
    n = len(rows[0])
    cells = [None if r is RULE else [_cell(c) for c in r][:n] + [""] * (n - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in cells if r is not None) for i in range(n)]
    pad = str.rjust if right else str.ljust
    lines = ["  ".join("-" * w for w in widths) if r is None
             else "  ".join(pad(c, w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(line.rstrip() if strip else line for line in lines)


def _cell(value) -> str:
    return "" if value is None else str(value)
