"""The cluster galleries of ``evaluate --report DIR`` and ``cluster --report DIR``: per title
and method, the predicted clusters as galleries of representative crops, beside the title's
track pages (:mod:`harvest.reports.title`), each thumbnail a link to its track's strip.

    OUT/<title_id>/<method>[-k].html  the galleries; each thumbnail is labelled #<track_id>

Galleries keep one THUMB-sized thumbnail per track of the title being drawn (~7 KB each).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.parquet as pq

from harvest.dataset import schema as S
from harvest.dataset import storage
from harvest.reports.page import (BATCH_ROWS, INDEX, MAX_STRIP, TRACKS_PER_PAGE, Writer, css_rgb,
                                  esc, href, identity_colour, page_html, sprite_bytes,
                                  sprite_html, thumbnail)
from harvest.reports.title import title_pages


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
                                     columns=[S.TRACK_ID, S.N_FACES, S.CROPS, S.CROP_POSITIONS]):
            for row in batch.to_pylist():
                t = row[S.TRACK_ID]
                if t not in want:
                    continue
                pos, crops = row[S.CROP_POSITIONS], row[S.CROPS]
                best = (int(np.argmin(np.abs(np.asarray(pos) - (row[S.N_FACES] - 1) / 2)))
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
            f"<span><i style='background:{css_rgb(colour[i])}'></i>{esc(i)}</span>"
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
                mix = ", ".join(f"<span style='color:{css_rgb(colour[i])}'>{esc(i)}</span> ×{m}"
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
