"""Static HTML views of a harvest: ``harvest report URL --out DIR`` and the cluster galleries
of ``evaluate --report DIR`` / ``cluster --report DIR``.

A report is plain files (HTML with inline CSS, inline SVG and a few lines of inline script, and
JPEG sprites) linked by relative paths only, so it opens from disk and from an object store's
static URL; nothing is fetched from elsewhere. Everything is read and written through fsspec.

    OUT/index.html                    every title of the manifest (status, counts, error)
    OUT/<title_id>/<page>.html        harvest: page 1 has the shot timeline, every page
                                      ``tracks_per_page`` track strips
    OUT/<title_id>/img/t<track>.jpg   one sprite per track strip (THUMB px thumbnails)
    OUT/<title_id>/<method>[-k].html  evaluate / cluster: the predicted clusters as galleries;
                                      each thumbnail is labelled #<track_id>, a link to the
                                      track's strip on the title's pages, written beside them

Memory: one title at a time, its shard streamed in batches of ``BATCH_ROWS`` tracks (row groups
are ~8 MiB); a page holds only HTML text; a strip shows at most ``MAX_STRIP`` crops. Galleries
keep one THUMB-sized thumbnail per track of the title being drawn (~7 KB each).

Every page ends with a small script that, once loaded, writes into ``<body>`` the number of
``<img>`` that decoded (``data-images-ok``), of images, of track strips (``data-strips``) and of
galleries (``data-galleries``): a browser test reads them from the dumped DOM.
"""
from __future__ import annotations

import colorsys
import html
import math
import posixpath
from collections import Counter
from urllib.parse import quote

import numpy as np
import pyarrow.parquet as pq

from harvest import schema as S
from harvest import storage

THUMB = 48                 # px, the side of a thumbnail in strips and galleries
SPRITE_QUALITY = 80        # JPEG quality of the sprites
MAX_STRIP = 24             # thumbnails per sprite (a strip, or a row of a gallery)
TRACKS_PER_PAGE = 200
BATCH_ROWS = 16            # shard rows per streamed batch
TRACKLET_NAMES = ("a", "p1", "p2")
PX_PER_SECOND = 4          # timeline scale
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


def _css_rgb(c) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


def _pick(n: int, keep: set[int], limit: int = MAX_STRIP) -> list[int]:
    """Indices 0..n-1 to show: all if n <= limit, else ``keep`` plus evenly spread others."""
    if n <= limit:
        return list(range(n))
    rest = [i for i in range(n) if i not in keep]
    k = max(0, limit - len(keep))
    even = [rest[int(round(x))] for x in np.linspace(0, len(rest) - 1, k)] if k else []
    return sorted(set(even) | (keep & set(range(n))))


# ---------------------------------------------------------------------------- harvest report
def _nav(pages: int, current: int | None) -> str:
    links = [f"<a href='../{INDEX}'>index</a>", "<a href='1.html#timeline'>timeline</a>"]
    if pages > 1:
        links += [f"<b>{p}</b>" if p == current else f"<a href='{p}.html'>{p}</a>"
                  for p in range(1, pages + 1)]
    return "<nav>" + " ".join(links) + "</nav>"


def _ticks(frames: int, fps: float, most: int) -> list[tuple[int, float]]:
    """(frame, seconds) of at most ``most`` round time ticks along the title (frames when the
    frame rate is unknown)."""
    seconds = frames / fps if fps else frames
    most = max(most, 1)
    step = 10 ** math.floor(math.log10(max(seconds / most, 1e-3)))
    step *= next(m for m in (1, 2, 5, 10) if seconds / (step * m) <= most)
    return [(int(round(t * (fps or 1))), t) for t in np.arange(0, seconds + 1e-9, step)]


def timeline_svg(meta: dict, tracks: dict, page_of) -> str:
    """Shots as segments along time, each track a bar inside its shot (a lane per overlap),
    green = valid, red = invalid, linking to its strip. PX_PER_SECOND wide (at least 1200 px,
    at most 20,000: the page scrolls it sideways)."""
    n = len(tracks["track_id"])
    frames = int(meta.get("frame_count") or 0) or int(max(tracks["last"], default=0)) + 1
    fps = float(meta.get("fps") or 0)
    width = int(min(max(1200, PX_PER_SECOND * frames / (fps or 25.0)), 20000))
    bounds = list(meta.get("shot_boundaries") or [0]) + [frames]
    x = lambda f: width * f / max(frames, 1)          # noqa: E731
    lanes, lane_end = np.zeros(n, np.int64), {}
    for i in np.lexsort((tracks["first"], tracks["shot"])):   # greedy lanes inside each shot
        ends = lane_end.setdefault(int(tracks["shot"][i]), [])
        free = next((k for k, e in enumerate(ends) if e < tracks["first"][i]), len(ends))
        ends[free:free + 1] = [tracks["last"][i]]
        lanes[i] = free
    n_lanes = int(lanes.max()) + 1 if n else 1
    lane_h = max(2, min(10, 400 // n_lanes))
    top, height = 30, 30 + n_lanes * lane_h + 4
    out = [f"<svg id=timeline xmlns='http://www.w3.org/2000/svg' width={width} height={height} "
           f"viewBox='0 0 {width} {height}' role=img aria-label='shots and tracks'>"]
    for frame, sec in _ticks(frames, fps, width // 100):
        if x(frame) > width - 30:
            continue
        out.append(f"<text x='{x(frame):.1f}' y='10'>{sec:g}{'s' if fps else ''}</text>")
    for k in range(len(bounds) - 1):
        a, b = bounds[k], bounds[k + 1]
        tip = f"shot {k}: frames {a}-{b - 1}" + (f", {a / fps:.2f}-{b / fps:.2f} s" if fps else "")
        out.append(f"<rect class=s{k % 2} x='{x(a):.1f}' y='14' width='{max(x(b) - x(a), 1):.1f}' "
                   f"height='{height - 14}'><title>{tip}</title></rect>")
        if x(b) - x(a) > 24:
            out.append(f"<text x='{x(a) + 2:.1f}' y='25'>{k}</text>")
    for i in range(n):
        t = int(tracks["track_id"][i])
        valid = bool(tracks["valid"][i])
        tip = (f"track {t}, shot {tracks['shot'][i]}, {tracks['n_faces'][i]} faces, "
               f"{tracks['t0'][i]:.2f}-{tracks['t1'][i]:.2f} s"
               + ("" if valid else f", invalid ({tracks['reason'][i]})"))
        w = max(x(tracks["last"][i] + 1) - x(tracks["first"][i]), 2)
        out.append(f"<a href='{page_of[t]}.html#t{t}'><rect class={'v' if valid else 'inv'} "
                   f"x='{x(tracks['first'][i]):.1f}' y='{top + lanes[i] * lane_h}' width='{w:.1f}' "
                   f"height='{max(lane_h - 1, 1)}'><title>{esc(tip)}</title></rect></a>")
    return "".join(out) + "</svg>"


def _first_last(col) -> tuple[np.ndarray, np.ndarray]:
    """First and last value of each list of a ListArray (empty lists give 0)."""
    values = col.values.to_numpy(zero_copy_only=False)
    off = col.offsets.to_numpy()
    if len(values) == 0:
        return np.zeros(len(col)), np.zeros(len(col))
    lo, hi = np.clip(off[:-1], 0, len(values) - 1), np.clip(off[1:] - 1, 0, len(values) - 1)
    return values[lo], values[hi]


def _track_summaries(pf: pq.ParquetFile) -> dict:
    """Pass 1 (small columns): per track id, shot, first/last frame and time, validity."""
    parts = {k: [] for k in ("track_id", "shot", "n_faces", "first", "last", "t0", "t1", "valid",
                             "reason")}
    for b in pf.iter_batches(batch_size=4096, columns=["track_id", "shot_id", "n_faces",
                                                       "frame_idx", "timestamps", "is_valid",
                                                       "invalid_reason"]):
        parts["track_id"].append(b.column("track_id").to_numpy())
        parts["shot"].append(b.column("shot_id").to_numpy())
        parts["n_faces"].append(b.column("n_faces").to_numpy())
        first, last = _first_last(b.column("frame_idx"))
        parts["first"].append(first)
        parts["last"].append(last)
        t0, t1 = _first_last(b.column("timestamps"))
        parts["t0"].append(t0)
        parts["t1"].append(t1)
        parts["valid"].append(b.column("is_valid").to_numpy(zero_copy_only=False))
        parts["reason"].extend(b.column("invalid_reason").to_pylist())
    return {k: (v if k == "reason" else (np.concatenate(v) if v else np.zeros(0)))
            for k, v in parts.items()}


def _track_link(t: int, page_of: dict, page: int) -> str:
    p = page_of.get(t)
    if p is None:
        return f"#{t} (missing)"
    return f"<a href='{'' if p == page else f'{p}.html'}#t{t}'>#{t}</a>"


def _strip(row: dict, title_id: str, page_of: dict, page: int, crops_mode: str | None,
           writer: Writer) -> str:
    """One track strip: its header (shot, faces, times, validity, links) and crop sprite."""
    from harvest.miners.hard_positive import tracklet_seeds
    t = row["track_id"]
    valid = row["is_valid"]
    n, frames = row["n_faces"], row["frame_idx"]
    status = ("valid" if valid else
              f"<span class=bad>invalid: {esc(str(row['invalid_reason'] or '?'))}</span>")
    links = ", ".join(_track_link(int(o), page_of, page) for o in row["cannot_link"]) or "none"
    hn = row["hard_negative"]
    head = (f"<b>track {t}</b> · shot {row['shot_id']} · {n} faces · frames "
            f"{frames[0]}-{frames[-1]}"
            f" · {row['timestamps'][0]:.2f}-{row['timestamps'][-1]:.2f} s · quality "
            f"{row['track_quality']:.3f} · {status} · cannot-link: {links} · hard negative: "
            f"{_track_link(int(hn), page_of, page) if hn is not None else 'none'}")
    members = row["tracklet_members"] or []
    where = {}                                     # face position -> tracklet index
    for k, m in enumerate(members):
        where.update({int(p): k for p in m})
    seeds = {}
    if members and row["crop_positions"]:
        emb = np.asarray(row["embeddings"].values.flatten(), np.float32).reshape(n, -1)
        seeds = {int(s): k for k, s in enumerate(tracklet_seeds(emb, members))}
    pos, crops = row["crop_positions"], row["crops"]
    if not crops:
        why = "crops mode none" if crops_mode == "none" else "none in this shard"
        body = f"<div class=none>no crops stored ({why})</div>"
    else:
        keep = {i for i, p in enumerate(pos) if p in seeds}
        shown = _pick(len(crops), keep)
        cells = []
        for i in shown:
            p = int(pos[i])
            k = where.get(p)
            role = f"{TRACKLET_NAMES[seeds[p]]} seed, " if p in seeds else ""
            member = f"in tracklet {TRACKLET_NAMES[k]}, " if k is not None else ""
            when = f"face {p}, frame {frames[p]}, {row['timestamps'][p]:.2f} s"
            cells.append((TRACKLET_NAMES[seeds[p]] if p in seeds else "", role + member + when,
                          f"m{k}" if k is not None else ""))
        rel = f"img/t{t}.jpg"
        writer.write(f"{title_id}/{rel}", sprite_bytes([thumbnail(crops[i]) for i in shown]))
        more = (f" <span class=none>({len(shown)} of {len(crops)} stored crops)</span>"
                if len(shown) < len(crops) else "")
        body = sprite_html(rel, cells, f"track {t} faces") + more
    return (f"<div class='strip {'valid' if valid else 'invalid'}' id=t{t}>"
            f"<div class=meta>{head}</div>{body}</div>")


STRIP_COLUMNS = ["track_id", "shot_id", "n_faces", "frame_idx", "timestamps", "embeddings",
                 "tracklet_members", "crops", "crop_positions", "cannot_link", "hard_negative",
                 "track_quality", "is_valid", "invalid_reason"]


def title_pages(fs, path: str, record: dict, writer: Writer, tracks_per_page: int) -> dict:
    """Write the pages of one title (streamed); -> its shard metadata and page count."""
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        meta = S.read_metadata(pf.schema_arrow)
        title_id = meta["title_id"]
        tracks = _track_summaries(pf)
        n = len(tracks["track_id"])
        pages = max(1, math.ceil(n / tracks_per_page))
        page_of = {int(t): 1 + i // tracks_per_page for i, t in enumerate(tracks["track_id"])}
        source = posixpath.basename(str(meta.get("source_uri") or record.get("source") or ""))
        facts = [f"source {esc(source)}", f"{meta.get('width')}x{meta.get('height')}",
                 f"{float(meta.get('fps') or 0):.3f} fps", f"{meta.get('frame_count')} frames",
                 f"{len(meta.get('shot_boundaries') or [])} shots", f"{n} tracks "
                 f"({int(np.sum(tracks['valid'])) if n else 0} valid)",
                 f"backend {esc(str(meta.get('backend')))}",
                 f"crops {esc(str(meta.get('crops', '?')))}",
                 f"config {esc(str(meta.get('config_hash')))}"]
        header = f"<h1>{esc(title_id)}</h1><div class=meta>{' · '.join(facts)}</div>"
        timeline = ("<h2>Shots and tracks</h2><div class=legend><span><i style='background:"
                    "#3a9a3a'></i>valid track</span><span><i style='background:#c33'></i>invalid track"
                    "</span><span>grey bands: shots; click a bar to see its track</span></div>"
                    + f"<div class=tl>{timeline_svg(meta, tracks, page_of)}</div>")
        legend = ("<div class=legend>crops underlined by tracklet: <span><i style='background:"
                  "#1f77b4'></i>a (anchor)</span><span><i style='background:#2ca02c'></i>p1</span>"
                  "<span><i style='background:#ff7f0e'></i>p2</span>labels a / p1 / p2 mark the "
                  "seed face each tracklet is built around</div>")

        def flush(page: int, strips: list[str]) -> None:
            lo = (page - 1) * tracks_per_page
            body = (header + _nav(pages, page) + (timeline if page == 1 else "")
                    + (f"<h2>Tracks {lo}-{lo + len(strips) - 1} of {n}</h2>" + legend
                       if strips else "<p class=none>no tracks</p>") + "".join(strips)
                    + _nav(pages, page))
            writer.write(f"{title_id}/{page}.html", page_html(f"{title_id} ({page}/{pages})", body))

        page, strips, row_i = 1, [], 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=STRIP_COLUMNS):
            emb = batch.column("embeddings")
            for r, row in enumerate(batch.drop_columns(["embeddings"]).to_pylist()):
                row["embeddings"] = emb[r]            # a ListScalar: read as numpy if needed
                if row_i // tracks_per_page + 1 != page:
                    flush(page, strips)
                    page, strips = page + 1, []
                strips.append(_strip(row, title_id, page_of, page, meta.get("crops"), writer))
                row_i += 1
        flush(page, strips)
    return dict(meta=meta, pages=pages, page_of=page_of)


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def write_report(url: str, out: str, tracks_per_page: int = TRACKS_PER_PAGE, log=print) -> str:
    """Write the HTML report of the harvest output ``url`` to ``out``; -> URL of index.html."""
    if tracks_per_page < 1:
        raise ValueError("tracks_per_page must be at least 1")
    fs, root = storage.open_fs(url)
    records = storage.read_records(fs, root)
    shards = storage.list_shards(fs, root)
    writer = Writer(out)
    rows, totals = [], Counter()
    for tid in sorted(set(records) | set(shards)):
        rec = records.get(tid, {"title_id": tid, "status": "no manifest record"})
        info, unreadable = None, None
        try:
            if tid in shards:
                info = title_pages(fs, shards[tid], rec, writer, tracks_per_page)
        except Exception as e:  # noqa: BLE001 - one bad shard does not stop the report
            unreadable = f"shard unreadable: {type(e).__name__}: {e}"
        log(f"harvest report: {tid}: "
            + (f"{info['pages']} page(s)" if info else unreadable or "no shard"))
        shots = len(info["meta"].get("shot_boundaries") or []) if info else None
        secs = rec.get("seconds")
        rate = rec.get("frames") / secs if secs and rec.get("frames") else None
        name = (f"<a href='{href(tid, '1.html')}'>{esc(tid)}</a>" if info else esc(tid))
        err = "".join(f"<pre>{esc(str(e))}</pre>" for e in (rec.get("error"), unreadable) if e)
        cells = [_fmt(rec.get(k)) for k in S.COUNT_FIELDS] + [_fmt(shots), _fmt(secs), _fmt(rate),
                                                              _fmt(info and info["pages"])]
        rows.append(f"<tr class='{esc(str(rec.get('status')))}'><td class=l>{name}</td><td class=l>"
                    f"{esc(posixpath.basename(str(rec.get('source') or '')))}</td><td class=l>"
                    f"{esc(str(rec.get('status')))}</td>" + "".join(f"<td>{c}</td>" for c in cells)
                    + f"<td class=l>{err}</td></tr>")
        totals.update({k: int(rec.get(k) or 0) for k in S.COUNT_FIELDS})
        totals["shots"] += shots or 0
        totals[str(rec.get("status"))] += 1
    head = ["title", "source", "status", "frames", "faces", "tracks", "valid tracks",
            "cannot-link pairs", "shots", "seconds", "frames/s", "pages", "error"]
    total = (f"<tr><th class=l>TOTAL</th><th></th><th class=l>{totals[S.STATUS_DONE]} done / "
             f"{totals[S.STATUS_FAILED]} failed</th>"
             + "".join(f"<th>{totals[k]}</th>" for k in S.COUNT_FIELDS)
             + f"<th>{totals['shots']}</th><th></th><th></th><th></th><th></th></tr>")
    body = (f"<h1>Harvest report</h1><div class=meta>{esc(url)}: {len(rows)} title(s)</div>"
            "<table><tr>" + "".join(f"<th class=l>{h}</th>" for h in head) + "</tr>"
            + "".join(rows) + total + "</table>")
    writer.write(INDEX, page_html("Harvest report", body))
    return writer.where()


def report_main(url: str, out: str, tracks_per_page: int = TRACKS_PER_PAGE) -> int:
    fs, root = storage.open_fs(url)
    if not fs.exists(root):
        print(f"harvest report: {url} does not exist")
        return 1
    print(write_report(url, out, tracks_per_page))
    return 0


# ---------------------------------------------------------------------------- cluster galleries
def representative_thumbs(shard: str, track_ids, borders: dict | None = None) -> dict:
    """track_id -> thumbnail of its representative crop (the stored crop nearest the track's
    middle face), for the tracks in ``track_ids``; ``borders``: track_id -> RGB frame colour.
    Streams the shard (crop columns only)."""
    want = set(int(t) for t in track_ids)
    borders = borders or {}
    fs, path = storage.open_fs(shard)
    out = {}
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=BATCH_ROWS,
                                     columns=["track_id", "n_faces", "crops", "crop_positions"]):
            for row in batch.to_pylist():
                t = row["track_id"]
                if t not in want:
                    continue
                pos, crops = row["crop_positions"], row["crops"]
                best = (int(np.argmin(np.abs(np.asarray(pos) - (row["n_faces"] - 1) / 2)))
                        if crops else None)
                out[t] = thumbnail(crops[best] if crops else None, borders.get(t))
    return out


def track_pages(shard: str, writer: Writer, tracks_per_page: int) -> dict:
    """Write the harvest report's pages of one title (its track strips) beside its galleries;
    -> track_id -> page, for the galleries' links (``harvest report`` layout, one title)."""
    fs, path = storage.open_fs(shard)
    return title_pages(fs, path, {}, writer, tracks_per_page)["page_of"]


def gallery_pages(writer: Writer, title_id: str, name: str, heading: str, top: str,
                  clusters: list[dict], thumbs: dict, tracks_per_page: int,
                  page_of: dict | None = None) -> list[str]:
    """Write ``title_id/name[-k].html``: one gallery per cluster, ``clusters`` in display order,
    each ``{"label", "info", "tracks": [(track_id, tooltip), ...]}``; a cluster is never split
    across pages. ``page_of`` (track_id -> page of ``track_pages``): each thumbnail is labelled
    with its track id, a link to the track's strip. -> the relative paths written."""
    page_of = page_of or {}

    def cell(t: int, tip: str) -> tuple:
        p = page_of.get(t)
        return (f"#{t}", tip, "", f"{p}.html#t{t}" if p else None)

    pages, cur, size = [], [], 0
    for c in clusters:
        if cur and size + len(c["tracks"]) > tracks_per_page:
            pages.append(cur)
            cur, size = [], 0
        cur.append(c)
        size += len(c["tracks"])
    pages.append(cur)
    files = [f"{name}.html" if k == 0 else f"{name}-{k + 1}.html" for k in range(len(pages))]
    for k, group in enumerate(pages):
        nav = (f"<nav><a href='../{INDEX}'>index</a> " + " ".join(
            f"<b>{j + 1}</b>" if j == k else f"<a href='{href(f)}'>{j + 1}</a>"
            for j, f in enumerate(files)) + "</nav>") if len(files) > 1 else \
            f"<nav><a href='../{INDEX}'>index</a></nav>"
        parts = [f"<h1>{esc(heading)}</h1>", top, nav]
        for c in group:
            rows = []
            for r in range(0, len(c["tracks"]), MAX_STRIP):
                chunk = c["tracks"][r:r + MAX_STRIP]
                rel = f"img/{name}-c{c['id']}-{r // MAX_STRIP}.jpg"
                writer.write(f"{title_id}/{rel}", sprite_bytes([thumbs[t] for t, _ in chunk]))
                rows.append(sprite_html(href(*rel.split("/")), [cell(t, tip) for t, tip in chunk],
                                        f"{c['label']} tracks"))
            parts.append(f"<div class=gallery id=c{c['id']}><div class=meta><b>"
                         f"{esc(c['label'])}</b> · {c['info']}</div>{''.join(rows)}</div>")
        writer.write(f"{title_id}/{files[k]}",
                     page_html(f"{heading} ({k + 1}/{len(files)})", "".join(parts + [nav])))
    return files


def _group(labels: np.ndarray) -> list[np.ndarray]:
    """Row indices of each cluster, largest first (ties: first row)."""
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def evaluation_report(out: str, items: list[dict], records: list[dict],
                      tracks_per_page: int = TRACKS_PER_PAGE) -> str:
    """``evaluate --report``: per title and method, the predicted clusters as galleries, each
    thumbnail framed in its labelled identity's colour, the title's metrics at the top.
    ``items``: ``{"title", "path" (shard), "method", "track_ids", "identity", "pred"}``;
    ``records``: evaluate's metric records. -> URL of index.html."""
    writer = Writer(out)
    metric = {(r["title"], r["method"]): r for r in records}
    index_rows, by_title = [], {}
    for it in items:
        by_title.setdefault(it["title"], []).append(it)
    for title, its in sorted(by_title.items()):          # one title's thumbnails at a time
        idents = sorted({str(i) for it in its for i in it["identity"]})
        colour = {i: identity_colour(k) for k, i in enumerate(idents)}
        first = its[0]
        thumbs = representative_thumbs(first["path"], first["track_ids"], {
            int(t): colour[str(i)] for t, i in zip(first["track_ids"], first["identity"])})
        page_of = track_pages(first["path"], writer, tracks_per_page)
        legend = "<div class=legend>identities: " + "".join(
            f"<span><i style='background:{_css_rgb(colour[i])}'></i>{esc(i)}</span>"
            for i in idents) + "</div>"
        for it in its:
            ids, who, pred = (np.asarray(it["track_ids"]), np.asarray(it["identity"], str),
                              np.asarray(it["pred"]))
            rec = metric.get((title, it["method"]), {})
            clusters, home = [], {}
            for k, g in enumerate(_group(pred)):
                count = Counter(who[g]).most_common()
                for i, _ in count:
                    home.setdefault(i, []).append(k)
                mix = ", ".join(f"<span style='color:{_css_rgb(colour[i])}'>{esc(i)}</span> ×{m}"
                                for i, m in count)
                clusters.append(dict(id=k, label=f"cluster {k}", info=f"{len(g)} tracks: {mix}"
                                     + (" <span class=bad>merged</span>" if len(count) > 1 else ""),
                                     tracks=[(int(ids[j]), f"track {ids[j]}: {who[j]}")
                                             for j in g]))
            split = [f"{esc(i)} → clusters {', '.join(map(str, ks))}"
                     for i, ks in sorted(home.items()) if len(ks) > 1]
            top = (f"<div class=meta>{_metrics_line(rec)}</div>" + legend
                   + f"<div class=meta>split identities: {'; '.join(split) or 'none'}</div>")
            files = gallery_pages(writer, title, it["method"],
                                  f"{title} · {it['method']} · {rec.get('head', '')}", top,
                                  clusters, thumbs, tracks_per_page, page_of)
            index_rows.append((title, it["method"], rec, href(title, files[0])))
    rows = "".join(f"<tr><td class=l><a href='{link}'>{esc(t)}</a></td><td class=l>{esc(m)}</td>"
                   + "".join(f"<td>{_num(r.get(k))}</td>" for k in _INDEX_METRICS) + "</tr>"
                   for t, m, r, link in index_rows)
    pooled = "".join(f"<tr><td class=l>pooled</td><td class=l>{esc(r['method'])}</td>"
                     + "".join(f"<td>{_num(r.get(k))}</td>" for k in _INDEX_METRICS) + "</tr>"
                     for r in records if r["title"] == "pooled")
    body = ("<h1>Evaluation: predicted clusters</h1><div class=meta>thumbnails are framed in the "
            "colour of their labelled identity; one gallery per predicted cluster</div><table><tr>"
            "<th class=l>title</th><th class=l>method</th>"
            + "".join(f"<th>{k}</th>" for k in _INDEX_METRICS) + "</tr>" + rows + pooled
            + "</table>")
    writer.write(INDEX, page_html("Evaluation report", body))
    return writer.where()


_INDEX_METRICS = ("wcp", "nmi", "pcr", "n_tracks", "n_clusters", "n_identities", "bcubed_f1")


def _num(v) -> str:
    return "–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _metrics_line(rec: dict) -> str:
    return " · ".join(f"<b>{k.upper() if len(k) <= 3 else k}</b> {_num(rec.get(k))}"
                      for k in _INDEX_METRICS)


def cluster_report(out: str, items: list[dict], tracks_per_page: int = TRACKS_PER_PAGE) -> str:
    """``cluster --report``: per title, each predicted person (cluster) with a strip of their
    tracks (representative crops), its size and confidence. ``items``: ``{"title", "path"
    (shard), "method", "track_ids", "cluster_id", "confidence"}``. -> URL of index.html."""
    writer = Writer(out)
    rows = []
    for it in sorted(items, key=lambda i: i["title"]):
        ids, lab, conf = (np.asarray(it["track_ids"]), np.asarray(it["cluster_id"]),
                          np.asarray(it["confidence"], float))
        thumbs = representative_thumbs(it["path"], ids)
        clusters = [dict(id=int(lab[g[0]]), label=f"person {int(lab[g[0]])}",
                         info=f"{len(g)} track(s) · confidence mean {conf[g].mean():.3f}, "
                              f"min {conf[g].min():.3f}",
                         tracks=[(int(ids[j]), f"track {ids[j]}, confidence {conf[j]:.3f}")
                                 for j in g[np.argsort(conf[g], kind="stable")]])
                    for g in _group(lab)]          # the least certain tracks of a person first
        top = (f"<div class=meta>method {esc(it['method'])} · {len(ids)} valid tracks · "
               f"{len(clusters)} predicted people · confidence = calibrated probability that a "
               f"track is with the right person (least certain first)</div>")
        files = gallery_pages(writer, it["title"], it["method"], f"{it['title']} · who is in it",
                              top, clusters, thumbs, tracks_per_page,
                              track_pages(it["path"], writer, tracks_per_page))
        rows.append(f"<tr><td class=l><a href='{href(it['title'], files[0])}'>{esc(it['title'])}"
                    f"</a></td><td class=l>{esc(it['method'])}</td><td>{len(ids)}</td>"
                    f"<td>{len(clusters)}</td></tr>")
    body = ("<h1>Clusters: who is in each title</h1><table><tr><th class=l>title</th>"
            "<th class=l>method</th><th>tracks</th><th>people</th></tr>" + "".join(rows)
            + "</table>")
    writer.write(INDEX, page_html("Cluster report", body))
    return writer.where()
