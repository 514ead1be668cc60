"""``harvest report URL --out DIR``: the pages of a harvest.

    OUT/index.html                    every title of the manifest (status, counts, error)
    OUT/<title_id>/<page>.html        page 1 has the shot timeline, every page
                                      ``tracks_per_page`` track strips
    OUT/<title_id>/img/t<track>.jpg   one sprite per track strip (THUMB px thumbnails)

Memory: one title at a time, its shard streamed in batches of ``BATCH_ROWS`` tracks (row groups
are ~8 MiB); a page holds only HTML text; a strip shows at most ``MAX_STRIP`` crops.
"""
from __future__ import annotations

import math
import posixpath
from collections import Counter

import numpy as np
import pyarrow.parquet as pq

from harvest.dataset import schema as S
from harvest.dataset import storage
from harvest.reports.page import (BATCH_ROWS, INDEX, TRACKS_PER_PAGE, Writer, esc, href,
                                  page_html, pick, sprite_bytes, sprite_html, thumbnail)

TRACKLET_NAMES = ("a", "p1", "p2")
PX_PER_SECOND = 4          # timeline scale


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
    for b in pf.iter_batches(batch_size=4096, columns=[S.TRACK_ID, S.SHOT_ID, S.N_FACES,
                                                       S.FRAME_IDX, S.TIMESTAMPS, S.IS_VALID,
                                                       S.INVALID_REASON]):
        parts["track_id"].append(b.column(S.TRACK_ID).to_numpy())
        parts["shot"].append(b.column(S.SHOT_ID).to_numpy())
        parts["n_faces"].append(b.column(S.N_FACES).to_numpy())
        first, last = _first_last(b.column(S.FRAME_IDX))
        parts["first"].append(first)
        parts["last"].append(last)
        t0, t1 = _first_last(b.column(S.TIMESTAMPS))
        parts["t0"].append(t0)
        parts["t1"].append(t1)
        parts["valid"].append(b.column(S.IS_VALID).to_numpy(zero_copy_only=False))
        parts["reason"].extend(b.column(S.INVALID_REASON).to_pylist())
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
    t = row[S.TRACK_ID]
    valid = row[S.IS_VALID]
    n, frames = row[S.N_FACES], row[S.FRAME_IDX]
    status = ("valid" if valid else
              f"<span class=bad>invalid: {esc(str(row['invalid_reason'] or '?'))}</span>")
    links = ", ".join(_track_link(int(o), page_of, page) for o in row[S.CANNOT_LINK]) or "none"
    hn = row[S.HARD_NEGATIVE]
    head = (f"<b>track {t}</b> · shot {row['shot_id']} · {n} faces · frames "
            f"{frames[0]}-{frames[-1]}"
            f" · {row['timestamps'][0]:.2f}-{row['timestamps'][-1]:.2f} s · quality "
            f"{row['track_quality']:.3f} · {status} · cannot-link: {links} · hard negative: "
            f"{_track_link(int(hn), page_of, page) if hn is not None else 'none'}")
    members = row[S.TRACKLET_MEMBERS] or []
    where = {}                                     # face position -> tracklet index
    for k, m in enumerate(members):
        where.update({int(p): k for p in m})
    seeds = {}
    if members and row[S.CROP_POSITIONS]:
        emb = np.asarray(row[S.EMBEDDINGS].values.flatten(), np.float32).reshape(n, -1)
        seeds = {int(s): k for k, s in enumerate(tracklet_seeds(emb, members))}
    pos, crops = row[S.CROP_POSITIONS], row[S.CROPS]
    if not crops:
        why = "crops mode none" if crops_mode == "none" else "none in this shard"
        body = f"<div class=none>no crops stored ({why})</div>"
    else:
        keep = {i for i, p in enumerate(pos) if p in seeds}
        shown = pick(len(crops), keep)
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


STRIP_COLUMNS = [S.TRACK_ID, S.SHOT_ID, S.N_FACES, S.FRAME_IDX, S.TIMESTAMPS, S.EMBEDDINGS,
                 S.TRACKLET_MEMBERS, S.CROPS, S.CROP_POSITIONS, S.CANNOT_LINK, S.HARD_NEGATIVE,
                 S.TRACK_QUALITY, S.IS_VALID, S.INVALID_REASON]


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
            emb = batch.column(S.EMBEDDINGS)
            for r, row in enumerate(batch.drop_columns([S.EMBEDDINGS]).to_pylist()):
                row[S.EMBEDDINGS] = emb[r]            # a ListScalar: read as numpy if needed
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
