"""Labelled synthetic movie clips made of real face photos (for the README demo and the tests).

The faces come from the images that the ``insightface`` package ships (``t1.jpg``, a group
photo, and ``Tom_Hanks_54745.png``). dlib's HOG detector finds them at generation time; each
face, cropped with its whole head, is one identity ``id0..idK`` (sorted by image, then x).
A clip is a list of shots separated by hard cuts; every shot has its own background palette
and 1-3 heads drifting smoothly in separate lanes, so faces never overlap and stay in frame.

    python -m harvest.samples OUT_DIR [--titles N]
"""
from __future__ import annotations

import argparse
import csv
import functools
import os
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

IMAGES = ("t1.jpg", "Tom_Hanks_54745.png")
PHOTOS_DIR = "photos"     # beside the clips: one head photo per identity (write_photos)
HEAD_MARGIN = 1.8          # head crop width / detector box width
AMP_S = 0.06               # relative amplitude of the heads' scale oscillation
LABEL_HEADER = ("title", "frame", "x1", "y1", "x2", "y2", "identity")


@dataclass(frozen=True)
class ShotSpec:
    """One shot: ``identities`` (1-3 indices, identity k is named ``f"id{k}"``),
    ``n_frames`` frames, and ``background_seed`` for its palette and texture."""
    identities: tuple[int, ...]
    n_frames: int = 35
    background_seed: int = 0


@dataclass
class ClipTruth:
    """Ground truth of a rendered clip.

    ``shot_boundaries``: first frame index of each shot, shape (n_shots,), starts with 0.
    ``boxes``: rows ``(frame, x1, y1, x2, y2, identity)``, one per visible face and frame,
    the face box (dlib's box mapped to the pasted position and scale) in pixels.
    """
    fps: float
    frame_count: int
    width: int
    height: int
    shot_boundaries: list[int] = field(default_factory=list)
    boxes: list[tuple[int, float, float, float, float, str]] = field(default_factory=list)

    def boxes_array(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Returns ``frames`` (N,) int, ``xyxy`` (N, 4) float and ``identities`` (N,)."""
        frames = np.array([r[0] for r in self.boxes], dtype=np.int64)
        xyxy = np.array([r[1:5] for r in self.boxes], dtype=np.float64).reshape(-1, 4)
        return frames, xyxy, [r[5] for r in self.boxes]

    def write_labels_csv(self, path: str, title: str) -> None:
        """Writes the box-level label CSV (header ``title,frame,x1,y1,x2,y2,identity``)
        to a local path or an fsspec URL."""
        write_labels_csv(path, [(title, self)])


def _open(path: str, mode: str):
    if "://" in path:
        import fsspec
        return fsspec.open(path, mode)
    return open(path, mode, newline="")


def write_labels_csv(path: str, items: list[tuple[str, ClipTruth]]) -> None:
    """Writes the labels of several ``(title, truth)`` pairs into one CSV (path or fsspec URL)."""
    with _open(path, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(LABEL_HEADER)
        for title, truth in items:
            w.writerows((title, *row) for row in truth.boxes)


def read_labels_csv(path: str) -> dict[str, list[tuple[int, float, float, float, float, str]]]:
    """Reads a label CSV back: ``{title: [(frame, x1, y1, x2, y2, identity), ...]}``."""
    out: dict[str, list] = {}
    with _open(path, "r") as f:
        for r in csv.DictReader(f):
            out.setdefault(r["title"], []).append((int(r["frame"]), *(float(r[k]) for k in LABEL_HEADER[2:6]),
                                                   r["identity"]))
    return out


def _imread(path: str) -> np.ndarray:
    """BGR uint8 image. Falls back to Pillow: once ``decord`` is imported before ``cv2``,
    decord's bundled zlib breaks OpenCV's PNG decoder ("libpng error: bad parameters to zlib")."""
    import cv2
    img = cv2.imread(path)
    if img is None:
        from PIL import Image
        img = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1])
    return img


@functools.lru_cache(maxsize=None)
def load_identities() -> tuple[tuple[np.ndarray, tuple[float, float, float, float]], ...]:
    """Head crops of the bundled photos' faces, found with dlib's HOG detector.

    Returns one ``(head_bgr, face_box)`` per identity: ``head_bgr`` (H, W, 3) uint8 with
    H/W = 150/110, ``face_box`` (4,) the detector box x1, y1, x2, y2 in ``head_bgr`` pixels.
    """
    import cv2
    import dlib
    import insightface
    folder = os.path.join(os.path.dirname(insightface.__file__), "data", "images")
    det = dlib.get_frontal_face_detector()
    out = []
    for name in IMAGES:
        img = _imread(os.path.join(folder, name))
        rects, _, _ = det.run(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), 1, 0.0)
        for r in sorted(rects, key=lambda r: r.left()):
            bx1, by1, bx2, by2 = r.left(), r.top(), r.right() + 1, r.bottom() + 1
            cw = HEAD_MARGIN * (bx2 - bx1)
            ch = cw * 150 / 110
            cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2 + 0.05 * (by2 - by1)
            x0, y0 = int(round(cx - cw / 2)), int(round(cy - ch / 2))
            w, h = int(round(cw)), int(round(ch))
            pad = max(0, -x0, -y0, x0 + w - img.shape[1], y0 + h - img.shape[0])
            padded = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            head = padded[y0 + pad:y0 + pad + h, x0 + pad:x0 + pad + w].copy()
            out.append((head, (bx1 - x0, by1 - y0, bx2 - x0, by2 - y0)))
    return tuple(out)


def default_shots(seed: int = 0, n_identities: int | None = None) -> list[ShotSpec]:
    """A plan of 4-5 shots of 30-40 frames with 1-3 faces each: one identity recurs in
    at least two shots and at least two shots have co-occurring identities."""
    rng = np.random.default_rng(seed)
    n_ids = n_identities or len(load_identities())
    n_shots = int(rng.integers(4, 6))
    sizes = rng.permutation([2, 3, 1, 2, 1][:n_shots])
    lead = int(rng.integers(n_ids))
    lead_shots = set(rng.choice(n_shots, size=int(rng.integers(2, n_shots)), replace=False).tolist())
    shots = []
    for i, k in enumerate(sizes):
        ids = [lead] if i in lead_shots else []
        others = [j for j in rng.permutation(n_ids).tolist() if j not in ids]
        ids += others[:k - len(ids)]
        shots.append(ShotSpec(tuple(int(j) for j in rng.permutation(ids)),
                              int(rng.integers(30, 41)), int(rng.integers(1 << 30))))
    return shots


def _background(spec: ShotSpec, index: int, width: int, height: int) -> np.ndarray:
    """(height, width, 3) float32 BGR: a two-colour gradient with blotchy texture; hue and
    brightness step with the shot index so that consecutive shots differ clearly."""
    import cv2
    rng = np.random.default_rng(spec.background_seed)
    hue = (index * 0.38 + rng.uniform(0, 0.1)) % 1.0
    val = (70, 200, 130)[index % 3]
    hsv = np.array([[[hue * 180, 200, val], [(hue * 180 + 20) % 180, 120, max(40, val - 50)]]],
                   dtype=np.uint8)
    c0, c1 = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (xx / width - 0.5) * np.cos(ang) + (yy / height - 0.5) * np.sin(ang) + 0.5
    bg = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]
    small = rng.normal(0, 14, (9, 16, 1)) + rng.normal(0, 5, (9, 16, 3))
    blot = cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    return bg + blot


def _mask(w: int, h: int) -> np.ndarray:
    import cv2
    m = np.zeros((h, w), np.float32)
    cv2.ellipse(m, (w // 2, h // 2), (int(w * 0.45), int(h * 0.46)), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(m, (0, 0), max(w, h) / 40)[..., None]


def _render(shots, width, height, face_size, seed):
    """Yields (frame_bgr uint8 (H, W, 3), [(x1, y1, x2, y2, identity), ...], shot index)."""
    import cv2
    heads = load_identities()
    rng = np.random.default_rng(seed)
    grain = rng.normal(0, 2.0, (4, height, width, 3)).astype(np.float32)
    fw, fh = face_size
    t_global = 0
    for si, spec in enumerate(shots):
        lane_w = width / len(spec.identities)
        mw, mh = fw * (1 + AMP_S) + 2, fh * (1 + AMP_S) + 2
        bg = _background(spec, si, width, height)
        n = spec.n_frames
        paths = []
        for lane, ident in enumerate(spec.identities):
            slack_x, slack_y = lane_w - mw, height - mh - 8
            vx = rng.choice([-1, 1]) * min(rng.uniform(1.0, 3.0), slack_x / max(n - 1, 1))
            vy = rng.choice([-1, 1]) * min(rng.uniform(0.3, 1.5), slack_y / max(n - 1, 1))
            x0 = lane * lane_w + mw / 2 + rng.uniform(0, max(0.0, slack_x - abs(vx) * (n - 1))) + max(0, -vx) * (n - 1)
            y0 = mh / 2 + 4 + rng.uniform(0, max(0.0, slack_y - abs(vy) * (n - 1))) + max(0, -vy) * (n - 1)
            paths.append((ident, x0, y0, vx, vy, rng.uniform(0, 2 * np.pi), rng.uniform(20, 40)))
        for t in range(n):
            frame = bg + grain[t_global % len(grain)]
            rows = []
            for ident, x0, y0, vx, vy, ph, period in paths:
                head, (bx1, by1, bx2, by2) = heads[ident]
                s = 1 + AMP_S * np.sin(2 * np.pi * t / period + ph)
                w, h = int(round(fw * s)), int(round(fh * s))
                cx, cy = x0 + vx * t, y0 + vy * t + 4 * np.sin(2 * np.pi * t / period + ph)
                px, py = int(round(cx - w / 2)), int(round(cy - h / 2))
                crop = cv2.resize(head, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
                m = _mask(w, h)
                roi = frame[py:py + h, px:px + w]
                roi += m * (crop - roi)
                kx, ky = w / head.shape[1], h / head.shape[0]
                rows.append((round(px + bx1 * kx, 2), round(py + by1 * ky, 2),
                             round(px + bx2 * kx, 2), round(py + by2 * ky, 2), f"id{ident}"))
            t_global += 1
            yield np.clip(frame, 0, 255).astype(np.uint8), rows, si


def _writer(path: str, width: int, height: int, fps: float):
    """Returns (write(frame_bgr), close()) for H.264 via PyAV, else mp4v via OpenCV."""
    try:
        import av
        if "libx264" not in av.codecs_available:
            raise ImportError("no libx264")
        container = av.open(path, "w")
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "bf": "0"}

        def write(img):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))

        def close():
            container.mux(stream.encode())
            container.close()
        return write, close
    except ImportError:
        import cv2
        vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not vw.isOpened():
            raise RuntimeError(f"cannot open a video writer for {path}")
        return vw.write, vw.release


def make_clip(path: str, shots: list[ShotSpec] | None = None, *, width: int = 640,
              height: int = 360, fps: float = 25.0, face_size: tuple[int, int] = (110, 150),
              seed: int = 0) -> ClipTruth:
    """Renders ``shots`` (default: ``default_shots(seed)``) one after another into ``path``.

    ``face_size`` is the (width, height) of a pasted head in pixels (the face box is about
    ``width / 1.8`` wide). Returns the clip's :class:`ClipTruth`.
    """
    shots = default_shots(seed) if shots is None else list(shots)
    n_ids = len(load_identities())
    for i, sh in enumerate(shots):
        k = len(sh.identities)
        if not (1 <= k <= 3 and len(set(sh.identities)) == k and sh.n_frames >= 1
                and all(0 <= j < n_ids for j in sh.identities)):
            raise ValueError(f"shot {i}: need 1-3 distinct identities in [0, {n_ids}) and >= 1 frame: {sh}")
        if face_size[0] * (1 + AMP_S) + 2 > width / k or face_size[1] * (1 + AMP_S) + 10 > height:
            raise ValueError(f"shot {i}: {k} faces of {face_size} do not fit in {width}x{height}")
    if not shots:
        raise ValueError("no shots")
    truth = ClipTruth(fps=float(fps), frame_count=0, width=width, height=height)
    write, close = _writer(path, width, height, fps)
    try:
        last = -1
        for frame, rows, si in _render(shots, width, height, face_size, seed):
            if si != last:
                truth.shot_boundaries.append(truth.frame_count)
                last = si
            truth.boxes += [(truth.frame_count, *r) for r in rows]
            write(frame)
            truth.frame_count += 1
    finally:
        close()
    return truth


def make_sample_set(out_dir: str, n_titles: int = 2, seed: int = 0) -> list[tuple[str, ClipTruth]]:
    """Writes ``title_<i>.mp4`` (shot plan and motion from seed ``seed + i``) and one
    ``labels.csv`` over all titles into ``out_dir``; returns ``[(mp4 path, truth), ...]``."""
    os.makedirs(out_dir, exist_ok=True)
    out = []
    for i in range(n_titles):
        path = os.path.join(out_dir, f"title_{i}.mp4")
        out.append((path, make_clip(path, seed=seed + i)))
    write_labels_csv(os.path.join(out_dir, "labels.csv"),
                     [(os.path.basename(p), t) for p, t in out])
    write_photos(os.path.join(out_dir, PHOTOS_DIR))
    return out


def write_photos(folder: str, scale: int = 3) -> list[str]:
    """``id<k>.png``: identity k's head photo (the crop the clips are made of, ``scale`` times
    larger), named as in ``labels.csv``: a photo to try ``people search --photo`` with."""
    import cv2
    os.makedirs(folder, exist_ok=True)
    paths = []
    for k, (head, _) in enumerate(load_identities()):
        path = os.path.join(folder, f"id{k}.png")
        big = cv2.resize(head, (head.shape[1] * scale, head.shape[0] * scale),
                         interpolation=cv2.INTER_CUBIC)
        if not cv2.imwrite(path, big):
            raise OSError(f"could not write {path}")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harvest.samples", description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--titles", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for path, t in make_sample_set(a.out_dir, a.titles, a.seed):
        ids = sorted({r[5] for r in t.boxes})
        print(f"{path}: {t.frame_count} frames, shots at {t.shot_boundaries}, identities {ids}")
    print(os.path.join(a.out_dir, "labels.csv"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
