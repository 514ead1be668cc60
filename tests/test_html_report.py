"""`harvest report`, `evaluate --report` and `cluster --report` seen in a real browser.

A real labelled harvest (`harvest sample` titles, SCRFD + MobileFaceNet pack, Ray; shared with
test_methods_e2e.py) is reported through the CLI as the README does, and its pages are rendered
by headless Chromium: the DOM it dumps after load says how many track strips / galleries the
page shows and how many of its images decoded (an inline script counts them), and the screenshot
must be a real picture. Links between tracks must land on an element of the page they name, the
report must be writable to an fsspec URL (``memory://``), and a ``--crops none`` harvest still
gets a report.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import FACE_PACK, REPO, need
from test_methods_e2e import harvest_once

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def chrome() -> str:
    """The headless browser: $CHROME, else the first of BROWSERS on PATH. Missing: skip, but
    FAIL under CI (`.ci/run` installs Debian's chromium)."""
    found = os.environ.get("CHROME") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not found:
        msg = (f"no headless browser ({', '.join(BROWSERS)} or $CHROME): "
               "install one, e.g. `apt-get install -y chromium`")
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return found


@pytest.fixture(scope="module")
def harvested(tmp_path_factory, ray_cluster):
    need(FACE_PACK)
    return harvest_once(tmp_path_factory)


def cli(*args) -> str:
    """`python -m harvest ...` (the README's `harvest ...`) from the repository root."""
    r = subprocess.run([sys.executable, "-m", "harvest", *args], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def render(chrome: str, page: Path, profile: Path, png: Path | None = None) -> dict:
    """Load ``page`` in headless Chromium; -> the counts the page's script wrote on <body>
    (and a screenshot at ``png``)."""
    base = [chrome, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
            "--virtual-time-budget=5000"]
    uri = page.resolve().as_uri()
    dom = subprocess.run(base + ["--dump-dom", uri], capture_output=True, text=True,
                         timeout=120).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(1)))
    assert attrs, f"the page script did not run: {body.group(0)}"
    if png is not None:
        subprocess.run(base + [f"--screenshot={png}", "--window-size=1280,2000", uri],
                       capture_output=True, timeout=120)
    return {k: int(v) for k, v in attrs.items()}


def assert_real_picture(png: Path) -> None:
    import cv2
    img = cv2.imread(str(png))
    assert img is not None and img.shape[:2] == (2000, 1280), png
    assert img.std() > 5                                       # not one flat colour
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 1000   # photos, not just text and boxes


def page_links(text: str) -> list[str]:
    return re.findall(r"""(?:href|src)=['"]([^'"]+)['"]""", text)


def check_links(read, exists, page: str) -> int:
    """Every relative href/src of ``page`` names a file that exists and, with #id, an element
    with that id there; nothing absolute. -> number of links checked."""
    text = read(page)
    n = 0
    for link in page_links(text):
        assert not re.match(r"^(/|[a-z]+:)", link), f"{page}: absolute link {link}"
        target, _, frag = link.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
        assert exists(path), f"{page}: {link} -> missing {path}"
        if frag:
            assert f"id={frag}" in read(path) or f"id='{frag}'" in read(path), (page, link)
        n += 1
    return n


def shard_tracks(root: Path) -> dict:
    """title_id -> (track ids, crops per track) of the harvest at ``root``."""
    out = {}
    for p in sorted((root / "shards").glob("*.parquet")):
        t = pq.read_table(p, columns=["title_id", "track_id", "crops"])
        out[p.stem] = (t["track_id"].to_pylist(), [len(c) for c in t["crops"].to_pylist()])
    return out


def test_harvest_report_in_a_browser(harvested, chrome, tmp_path):
    root, title_of = harvested
    out = tmp_path / "report"
    printed = cli("report", str(root / "harvest"), "--out", str(out))
    assert printed.strip().splitlines()[-1] == str(out / "index.html")
    tracks = shard_tracks(root / "harvest")
    assert sorted(tracks) == sorted(title_of.values())
    # index: every title, linked
    index = (out / "index.html").read_text()
    for tid in tracks:
        assert f"href='{tid}/1.html'" in index
    shown = render(chrome, out / "index.html", tmp_path / "profile")
    assert shown["strips"] == 0 and shown["images-ok"] == shown["images"] == 0
    # a title page: one strip per track, one sprite per track with crops, all decoded
    tid = title_of["title_0.mp4"]
    ids, n_crops = tracks[tid]
    png = tmp_path / "title.png"
    shown = render(chrome, out / tid / "1.html", tmp_path / "profile", png)
    print(f"title page: {shown}")
    assert shown["strips"] == len(ids) > 0
    assert shown["images-ok"] == shown["images"] == sum(c > 0 for c in n_crops) == len(ids)
    assert_real_picture(png)
    page = (out / tid / "1.html").read_text()
    assert page.count("<svg id=timeline") == 1 and page.count("<rect class=v") + page.count(
        "<rect class=inv") == len(ids)                        # every track on the timeline
    assert re.search(r"title='a seed, in tracklet a, face \d+", page)   # seeds are marked
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    n = sum(check_links(lambda p: (out / p).read_text(), lambda p: (out / p).exists(),
                        f"{t}/1.html") for t in tracks)
    assert n > 2 * sum(len(i) for i, _ in tracks.values())   # sprites, timeline, cannot-links


def test_pages_paginate_and_links_cross_pages(harvested, chrome, tmp_path):
    root, title_of = harvested
    out, per = tmp_path / "paged", 2
    cli("report", str(root / "harvest"), "--out", str(out), "--tracks-per-page", str(per))
    expected = found = 0
    for tid in title_of.values():
        t = pq.read_table(root / "harvest" / "shards" / f"{tid}.parquet",
                          columns=["track_id", "cannot_link", "hard_negative"])
        ids = t["track_id"].to_pylist()
        page_of = {i: k // per for k, i in enumerate(ids)}
        for i, links, hn in zip(ids, t["cannot_link"].to_pylist(), t["hard_negative"].to_pylist()):
            partners = links + ([hn] if hn is not None else [])
            expected += sum(page_of[o] != page_of[i] for o in partners)
        pages = sorted((p.name for p in (out / tid).glob("*.html")), key=lambda n: int(n[:-5]))
        assert pages == [f"{k}.html" for k in range(1, math.ceil(len(ids) / per) + 1)]
        for k, name in enumerate(pages):
            text = (out / tid / name).read_text()
            assert [int(t) for t in re.findall(r"class='strip \w+' id=t(\d+)", text)] == \
                ids[k * per:(k + 1) * per]
            check_links(lambda p: (out / p).read_text(), lambda p: (out / p).exists(),
                        f"{tid}/{name}")
            found += len(re.findall(r"href='\d+\.html#t\d+'>#", text))
    assert found == expected > 0     # every partner on another page is linked to that page
    tid = title_of["title_0.mp4"]
    ids, _ = shard_tracks(root / "harvest")[tid]
    pages = sorted((p.name for p in (out / tid).glob("*.html")), key=lambda n: int(n[:-5]))
    shown = render(chrome, out / tid / pages[-1], tmp_path / "profile")
    assert shown["strips"] == len(ids[(len(pages) - 1) * per:]) == shown["images-ok"]


def test_report_reads_and_writes_fsspec_urls(harvested):
    import fsspec
    root, title_of = harvested
    mem = fsspec.filesystem("memory")
    mem.put(str(root / "harvest"), "/rep-test/harvest", recursive=True)
    try:
        from harvest.cli import main
        assert main(["report", "memory://rep-test/harvest", "--out", "memory://rep-test/out"]) == 0
        files = {p for p in mem.find("/rep-test/out")}
        assert "/rep-test/out/index.html" in files
        read = lambda p: mem.cat_file(f"/rep-test/out/{p}").decode()     # noqa: E731
        exists = lambda p: mem.exists(f"/rep-test/out/{p}")              # noqa: E731
        for tid in title_of.values():
            assert f"/rep-test/out/{tid}/1.html" in files
            assert check_links(read, exists, f"{tid}/1.html") > 0
        assert check_links(read, exists, "index.html") == len(title_of)
        assert not [p for p in files if "/." in p]                       # no temporary files
        # fault injection: a truncated shard is named in the index; the other titles go on
        bad = title_of["title_2.mp4"]
        path = f"/rep-test/harvest/shards/{bad}.parquet"
        mem.pipe_file(path, mem.cat_file(path)[:1000])
        assert main(["report", "memory://rep-test/harvest", "--out", "memory://rep-test/o2"]) == 0
        index = mem.cat_file("/rep-test/o2/index.html").decode()
        assert re.search(rf"<tr class='done'><td class=l>{bad}</td>.*shard unreadable", index)
        assert {mem.exists(f"/rep-test/o2/{t}/1.html") for t in title_of.values() if t != bad} \
            == {True}
    finally:
        mem.rm("/rep-test", recursive=True)


def test_crops_none_harvest_and_a_failed_title_still_get_a_report(harvested, chrome, tmp_path):
    from harvest.cli import EXIT_TITLES_FAILED, main
    root, _ = harvested
    videos, none = tmp_path / "videos", tmp_path / "none"
    videos.mkdir()
    shutil.copy(root / "videos" / "title_1.mp4", videos / "title_1.mp4")
    (videos / "broken.mp4").write_bytes(b"")                     # a title that fails
    assert main(["run", "--input", str(videos), "--output", str(none), "--models",
                 need(FACE_PACK), "--crops", "none", "--no-progress",
                 "--workers", "1"]) == EXIT_TITLES_FAILED
    out = tmp_path / "report"
    cli("report", str(none), "--out", str(out))
    failed, = [json.loads(p.read_text()) for p in (none / "manifest").glob("*.json")
               if json.loads(p.read_text())["status"] == "failed"]
    index = (out / "index.html").read_text()
    row = re.search(rf"<tr class='failed'><td class=l>{failed['title_id']}</td>.*?</tr>", index)
    assert row and "<pre>" in row.group(0) and "empty" in row.group(0)   # its error, no link
    assert not (out / failed["title_id"]).exists()
    (tid, (ids, n_crops)), = shard_tracks(none).items()
    assert ids and set(n_crops) == {0}
    page = (out / tid / "1.html").read_text()
    assert page.count("no crops stored (crops mode none)") == len(ids)
    assert not (out / tid / "img").exists()
    shown = render(chrome, out / tid / "1.html", tmp_path / "profile")
    assert shown["strips"] == len(ids) and shown["images"] == 0


def test_evaluate_and_cluster_reports_in_a_browser(harvested, chrome, tmp_path):
    from harvest.reports.page import MAX_STRIP
    from training.cli import cluster_main, evaluate_main
    from training.clustering.cluster_titles import META_KEY
    root, title_of = harvested
    shards = str(root / "harvest" / "shards")
    ev = tmp_path / "eval"
    assert evaluate_main(["--shards", shards, "--labels", str(root / "videos" / "labels.csv"),
                          "--method", "c1c", "finch", "--json", str(tmp_path / "e.json"),
                          "--report", str(ev)]) == 0
    records = json.loads((tmp_path / "e.json").read_text())["results"]
    index = (ev / "index.html").read_text()
    for r in records:
        if r["title"] == "pooled":
            continue
        page = ev / r["title"] / f"{r['method']}.html"
        text = page.read_text()
        assert f"<b>WCP</b> {r['wcp']:.3f}" in text and f"<b>NMI</b> {r['nmi']:.3f}" in text
        assert f"<b>PCR</b> {r['pcr']:.3f}" in text
        assert f"href='{r['title']}/{r['method']}.html'" in index
        # every labelled track once, in the colour of its identity
        assert len(re.findall(r"title='track \d+: id\d+'", text)) == r["n_tracks"]
    # the title where FINCH merged most (its coarsest partition merges people here)
    finch = min((r for r in records if r["method"] == "finch" and r["title"] != "pooled"),
                key=lambda r: r["n_clusters"] / r["n_identities"])
    shown = render(chrome, ev / finch["title"] / "finch.html", tmp_path / "profile")
    print(f"evaluate gallery: {shown} ({finch['n_clusters']} clusters, "
          f"{finch['n_identities']} identities)")
    assert shown["galleries"] == finch["n_clusters"]
    assert shown["images-ok"] == shown["images"] >= finch["n_clusters"]
    merged = (ev / finch["title"] / "finch.html").read_text().count("class=bad>merged")
    assert (merged > 0) == (finch["n_clusters"] < finch["n_identities"])

    cl, rep = tmp_path / "clusters", tmp_path / "cluster-report"
    assert cluster_main(["--shards", shards, "--output", str(cl), "--report", str(rep)]) == 0
    for tid in title_of.values():
        meta = json.loads(pq.read_schema(cl / f"{tid}.parquet").metadata[META_KEY])
        png = tmp_path / "cluster.png"
        shown = render(chrome, rep / tid / f"{meta['config']['method']}.html", tmp_path / "profile",
                       png if tid == title_of["title_0.mp4"] else None)
        assert shown["galleries"] == meta["n_clusters"] > 0
        rows = sum(math.ceil(s / MAX_STRIP) for s in meta["cluster_sizes"])
        assert shown["images-ok"] == shown["images"] == rows
    assert_real_picture(tmp_path / "cluster.png")


def test_long_strips_keep_the_seeds_and_spread_the_rest():
    from harvest.reports.page import MAX_STRIP, THUMB, pick, thumbnail
    assert pick(5, {1}) == [0, 1, 2, 3, 4]
    for n, keep in ((MAX_STRIP + 1, {3}), (1000, {0, 500, 999}), (10_000, {17, 18, 9000})):
        shown = pick(n, keep)
        assert len(shown) == MAX_STRIP and shown == sorted(set(shown)) and keep <= set(shown)
        assert shown[0] == 0 and shown[-1] == n - 1                       # both ends
        assert max(np.diff(shown)) <= 2 * n / (MAX_STRIP - len(keep))     # evenly spread
    grey = thumbnail(b"not a jpeg")                      # an undecodable crop: a marked tile
    assert grey.shape == (THUMB, THUMB, 3) and grey.std() > 0


def test_galleries_paginate_without_splitting_a_cluster(tmp_path):
    from harvest.reports.galleries import gallery_pages
    from harvest.reports.page import MAX_STRIP, Writer, thumbnail
    sizes = [3, 1, MAX_STRIP + 6, 2]
    clusters, start = [], 0
    for k, n in enumerate(sizes):
        clusters.append(dict(id=k, label=f"person {k}", info=f"{n} tracks",
                             tracks=[(t, f"track {t}") for t in range(start, start + n)]))
        start += n
    thumbs = {t: thumbnail(None) for t in range(start)}
    files = gallery_pages(Writer(str(tmp_path)), "T", "c1c", "T", "", clusters, thumbs, 4)
    assert files == ["c1c.html", "c1c-2.html", "c1c-3.html"]        # [3, 1] [30] [2]
    pages = [(tmp_path / "T" / f).read_text() for f in files]
    assert [re.findall(r"class=gallery id=c(\d+)", p) for p in pages] == [["0", "1"], ["2"], ["3"]]
    assert [len(re.findall(r"<img ", p)) for p in pages] == [2, 2, 1]  # 30 tracks: 2 sprite rows
    assert sum(len(re.findall(r"title='track \d+'", p)) for p in pages) == start
    for f in files:
        check_links(lambda p: (tmp_path / p).read_text() if p.endswith(".html") else "",
                    lambda p: (tmp_path / p).exists() or p == "index.html", f"T/{f}")


def test_cluster_gallery_labels_each_track_with_a_link_to_its_strip(tmp_path):
    """Galleries show each track's id on its thumbnail, a link to the track's strip (the
    harvest report's pages of the title, written beside the galleries). No Ray, no browser."""
    from harvest.reports.galleries import cluster_report
    from training.synthetic import SyntheticSpec, write_dataset
    data = write_dataset(str(tmp_path / "syn"), 1, SyntheticSpec(dim=8, tracks_per_title=14),
                         seed=2, labels=False)
    shard = os.path.join(data["shards"], "title000.parquet")
    ids = pq.read_table(shard, columns=["track_id"])["track_id"].to_numpy()
    rep = tmp_path / "rep"
    cluster_report(str(rep), [dict(title="title000", path=shard, method="c1c", track_ids=ids,
                                   cluster_id=ids % 3, confidence=np.ones(len(ids)))],
                   tracks_per_page=5)
    galleries = sorted((rep / "title000").glob("c1c*.html"))
    labels = [m for g in galleries
              for m in re.findall(r"<a href='(\d+)\.html#t(\d+)'><b>#(\d+)</b></a>", g.read_text())]
    assert sorted(int(t) for _, t, shown in labels if t == shown) == sorted(ids.tolist())
    assert {int(t): int(p) for p, t, _ in labels} == {int(t): 1 + i // 5 for i, t in enumerate(ids)}
    n = sum(check_links(lambda p: (rep / p).read_text() if p.endswith(".html") else "",
                        lambda p: (rep / p).exists(), f"title000/{g.name}") for g in galleries)
    assert n >= len(ids)
