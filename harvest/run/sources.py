"""Sources: list the videos behind an fsspec URL or glob, name them, stage remote ones locally."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from harvest.dataset.storage import is_local

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv")


@dataclass(frozen=True)
class Source:
    uri: str            # canonical URI, protocol included (file:///abs/path for local files)
    size: int           # bytes; -1 when the store would not say

    @property
    def basename(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def title_id(self) -> str:
        """Stable id: readable stem + hash of the canonical URI and size."""
        digest = hashlib.sha256(f"{self.uri}|{self.size}".encode()).hexdigest()[:12]
        stem = re.sub(r"[^A-Za-z0-9]+", "-", self.basename.rsplit(".", 1)[0]).strip("-")[:40]
        return f"{stem or 'title'}-{digest}"


def _canonical(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path)


def list_sources(url: str) -> list[Source]:
    """Videos named by ``url``: one file, a directory (searched recursively), or a glob.
    Directory listings keep video extensions only; an explicit file is always kept. Nothing
    found is an error (FileNotFoundError), not an empty list."""
    fs, path = fsspec.core.url_to_fs(url)
    if any(ch in path for ch in "*?["):
        paths = fs.glob(path)
        if not paths:
            raise FileNotFoundError(f"no video found: no file matches {url}")
    elif fs.isdir(path):
        paths = [p for p in fs.find(path) if p.lower().endswith(VIDEO_EXTENSIONS)]
        if not paths:
            raise FileNotFoundError(f"no video found in {url} (searched recursively for "
                                    f"{', '.join(VIDEO_EXTENSIONS)})")
    elif fs.exists(path):
        paths = [path]
    else:
        raise FileNotFoundError(f"no such input: {url}")
    out = []
    for p in sorted(paths):
        try:
            size = int(fs.size(p))
        except Exception:   # noqa: BLE001 - a store that cannot stat is still listable
            size = -1
        out.append(Source(_canonical(fs, p), size))
    return out


@contextlib.contextmanager
def staged(uri: str, scratch_dir: str | None = None) -> Iterator[str]:
    """Yield a local path for ``uri``; remote files are copied to scratch and removed after."""
    fs, path = fsspec.core.url_to_fs(uri)
    if is_local(fs):
        if not os.path.exists(path):
            raise FileNotFoundError(f"cannot read {uri}: no such file")
        yield path
        return
    tmpdir = tempfile.mkdtemp(prefix="harvest-stage-", dir=scratch_dir)
    try:
        local = os.path.join(tmpdir, os.path.basename(path) or "video")
        fs.get_file(path, local)
        yield local
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
