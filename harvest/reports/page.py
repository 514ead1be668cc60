"""Page machinery every HTML report shares: the page chrome (CSS, the counting script), the
atomic ``Writer``, thumbnails of stored crops and the JPEG sprites they are drawn in.

Reports are plain files linked by relative paths (see :mod:`harvest.reports`); every page ends
with a small script that, once loaded, writes into ``<body>`` the number of ``<img>`` that
decoded (``data-images-ok``), of images, of track strips (``data-strips``) and of galleries
(``data-galleries``): a browser test reads them from the dumped DOM.
"""
from __future__ import annotations

import colorsys
import html
import posixpath
from urllib.parse import quote

import numpy as np

from harvest.dataset import storage

THUMB = 48                 # px, the side of a thumbnail in strips and galleries
SPRITE_QUALITY = 80        # JPEG quality of the sprites
MAX_STRIP = 24             # thumbnails per sprite (a strip, or a row of a gallery)
TRACKS_PER_PAGE = 200
BATCH_ROWS = 16            # shard rows per streamed batch
INDEX = "index.html"

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
a{color:#0b5cad}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}
td.l,th.l{text-align:left}tr.failed{background:#fde8e8}pre{white-space:pre-wrap;margin:0}
nav{margin:8px 0}nav a,nav b{margin-right:6px}
.strip,.gallery{background:#fff;border:1px solid #ddd;border-left:6px solid #3a9a3a;
margin:6px 0;padding:4px 8px}.strip.invalid{border-left-color:#c33}
.strip:target,.gallery:target{outline:3px solid #f0a000}
.meta{font-size:12px;color:#444;margin-bottom:3px}.bad{color:#c33;font-weight:bold}
.sprite{position:relative;margin:2px 0}.sprite img{display:block}
.sprite span{position:absolute;top:0;height:100%;box-sizing:border-box;font:bold 10px sans-serif;
color:#fff;text-shadow:0 0 2px #000;padding:1px}
.sprite span b{background:rgba(0,0,0,.65);padding:0 2px;border-radius:2px}
.sprite span.m0{border-bottom:4px solid #1f77b4}.sprite span.m1{border-bottom:4px solid #2ca02c}
.sprite span.m2{border-bottom:4px solid #ff7f0e}.none{color:#777;font-style:italic}
.legend span{display:inline-block;margin:0 8px 2px 0}.legend i{display:inline-block;width:12px;
height:12px;margin-right:3px;vertical-align:middle}
.tl{overflow-x:auto;max-width:100%}svg .v{fill:#3a9a3a}svg .inv{fill:#c33}svg .s0{fill:#e4e4e4}svg .s1{fill:#cfd8e3}
svg text{font:10px sans-serif;fill:#333}svg a:hover rect{stroke:#000;stroke-width:1}
"""
SCRIPT = ("<script>addEventListener('load',function(){var im=document.images,n=0,i;"
          "for(i=0;i<im.length;i++)if(im[i].complete&&im[i].naturalWidth>0)n++;"
          "var b=document.body.dataset;b.imagesOk=n;b.images=im.length;"
          "b.strips=document.querySelectorAll('.strip').length;"
          "b.galleries=document.querySelectorAll('.gallery').length;});</script>")

esc = html.escape


def page_html(title: str, body: str) -> bytes:
    """A whole page: the one place for the page chrome (CSS, counting script)."""
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<meta name=viewport content='width=device-width'><style>{CSS}</style></head>"
            f"<body>{body}{SCRIPT}</body></html>").encode()


def href(*parts: str) -> str:
    return "/".join(quote(p) for p in parts)


class Writer:
    """Writes files under an output URL (local path, memory://, s3://, ...) atomically."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = storage.open_fs(url)

    def write(self, rel: str, data: bytes) -> None:
        storage.write_atomic(self.fs, posixpath.join(self.root, rel), data, fsync=False)

    def where(self, rel: str = INDEX) -> str:
        return posixpath.join(self.url.rstrip("/"), rel)


# ---------------------------------------------------------------------------- thumbnails
def thumbnail(jpeg: bytes | None, border: tuple | None = None) -> np.ndarray:
    """A stored crop (JPEG bytes) -> THUMB x THUMB BGR, grey when missing or undecodable;
    ``border`` (RGB) draws a frame in that colour."""
    import cv2
    # the JPEG decoder scales by 1/2 itself (DCT), a quarter of the work for a 112 px crop
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_COLOR_2) if jpeg else None
    if img is None:
        img = np.full((THUMB, THUMB, 3), 160, np.uint8)
        cv2.line(img, (8, 8), (THUMB - 9, THUMB - 9), (110, 110, 110), 2)
        cv2.line(img, (8, THUMB - 9), (THUMB - 9, 8), (110, 110, 110), 2)
    else:
        img = cv2.resize(img, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    if border is not None:
        img = img.copy()
        cv2.rectangle(img, (1, 1), (THUMB - 2, THUMB - 2), tuple(int(c) for c in border[::-1]), 3)
    return img


def sprite_bytes(thumbs: list[np.ndarray]) -> bytes:
    """Thumbnails side by side -> one JPEG (quality SPRITE_QUALITY)."""
    import cv2
    ok, buf = cv2.imencode(".jpg", np.hstack(thumbs), [cv2.IMWRITE_JPEG_QUALITY, SPRITE_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding of a sprite failed")
    return buf.tobytes()


def _cell_label(label: str, link: str | None) -> str:
    if not label:
        return ""
    return f"<a href='{link}'><b>{esc(label)}</b></a>" if link else f"<b>{esc(label)}</b>"


def sprite_html(src: str, cells: list[tuple], alt: str) -> str:
    """An <img> of a sprite plus one overlay cell per thumbnail: (label, tooltip, css class),
    or (label, tooltip, css class, link): the visible label is then a link."""
    w = THUMB * len(cells)
    spans = "".join(f"<span class='{c[2]}' style='left:{i * THUMB}px;width:{THUMB}px' "
                    f"title='{esc(c[1])}'>{_cell_label(c[0], c[3] if len(c) > 3 else None)}</span>"
                    for i, c in enumerate(cells))
    return (f"<div class=sprite style='width:{w}px;height:{THUMB}px'><img src='{src}' "
            f"width={w} height={THUMB} alt='{esc(alt)}'>{spans}</div>")


def identity_colour(i: int) -> tuple[int, int, int]:
    """RGB of the i-th identity: distinct hues (golden-ratio steps), two brightness levels."""
    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95 if i % 2 == 0 else 0.7)
    return int(r * 255), int(g * 255), int(b * 255)


def css_rgb(c) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def pick(n: int, keep: set[int], limit: int = MAX_STRIP) -> list[int]:
    """Indices 0..n-1 to show: all if n <= limit, else ``keep`` plus evenly spread others."""
    if n <= limit:
        return list(range(n))
    rest = [i for i in range(n) if i not in keep]
    k = max(0, limit - len(keep))
    even = [rest[int(round(x))] for x in np.linspace(0, len(rest) - 1, k)] if k else []
    return sorted(set(even) | (keep & set(range(n))))
