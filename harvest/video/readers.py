"""Reader registry: which decoder turns a title into frame chunks.

A reader is one class plus one line in ``READERS``. Each class carries its registry entry:
``name`` (the ``--decoder`` value), ``priority`` (``auto`` tries readers in increasing priority)
and ``unusable(info, device)`` (why it cannot decode this stream for a backend that wants frames
on ``device``; "" when it can). Nothing else names a reader.

The CPU reader (``pyav``, ``harvest.video.decode.ChunkedVideoReader``) always opens the file first:
its probe is where bad input is diagnosed (missing, empty, truncated, no video stream, unknown
codec) and it supplies the ``VideoInfo`` every reader reports. A preferred reader that cannot take
the title leaves the CPU reader in place with ``fallback`` saying why, so one odd file (a rotated
phone clip, 10-bit HEVC) never fails a GPU run. A preferred reader that starts a title but cannot
finish it (``ReaderFailed``: a decoder error mid-stream, a stream that ends early) is not the end of
the title either: ``read_title`` runs the title again with the CPU reader from the first frame,
``fallback`` naming the error, and what the first pass built is discarded by its caller.
"""
from __future__ import annotations

from harvest.video.decode import MAX_CHUNK_BYTES, ChunkedVideoReader, ReaderFailed
from harvest.video.nvdec import NvdecReader


class PyAVReader(ChunkedVideoReader):
    """Registry entry for the CPU reader: decodes anything FFmpeg can, for any device."""
    priority = 100

    @classmethod
    def unusable(cls, info, device) -> str:
        return ""


READERS = (NvdecReader, PyAVReader)


def choices() -> list[str]:
    return ["auto"] + [r.name for r in READERS]


def validate_name(name: str) -> None:
    if name not in choices():
        raise ValueError(f"unknown decoder {name!r}; choose one of {choices()}")


def open_reader(path: str, *, decoder: str = "auto", device=None, chunk_frames: int = 32,
                max_chunk_bytes: int | None = MAX_CHUNK_BYTES):
    """The reader for one title. ``decoder``: "auto" (first usable by priority), or a reader's
    name (used where usable, else the CPU reader with ``fallback`` set). ``device``: where the
    face backend wants frames (None: numpy frames on the CPU; a torch device: tensors there).
    Raises ``harvest.video.decode.DecodeError`` for unreadable input."""
    validate_name(decoder)
    cpu = PyAVReader(path, chunk_frames=chunk_frames, max_chunk_bytes=max_chunk_bytes,
                     device=device)
    wanted = sorted(READERS, key=lambda r: r.priority) if decoder == "auto" else \
        [r for r in READERS if r.name == decoder]
    reasons = []
    for cls in wanted:
        if cls is PyAVReader:
            break
        why = cls.unusable(cpu.info, device)
        if why:
            reasons.append(f"{cls.name}: {why}")
            continue
        try:
            reader = cls(path, cpu.info, device, chunk_frames=chunk_frames,
                         max_chunk_bytes=max_chunk_bytes)
        except Exception as e:  # noqa: BLE001 - a GPU decoder that cannot start: the CPU reader
            reasons.append(f"{cls.name}: {e}")
            continue
        cpu.close()
        return reader
    if decoder != "auto" or getattr(device, "type", "cpu") == "cuda":
        cpu.fallback = "; ".join(reasons)   # a GPU run that decodes this title on the CPU says why
    return cpu


def read_title(path: str, run, *, decoder: str = "auto", device=None, chunk_frames: int = 32,
               max_chunk_bytes: int | None = MAX_CHUNK_BYTES):
    """``run(reader)`` with the title's reader (``open_reader``); returns what ``run`` returns.
    Where a preferred reader cannot finish the title (``run`` raises ``ReaderFailed``) the CPU
    reader decodes it again from its first frame, ``fallback`` saying why, and ``run`` is called
    once more: it must start from nothing and discard what it built when it raises."""
    with open_reader(path, decoder=decoder, device=device, chunk_frames=chunk_frames,
                     max_chunk_bytes=max_chunk_bytes) as reader:
        try:
            return run(reader)
        except ReaderFailed as e:
            if isinstance(reader, PyAVReader):
                raise
            why = f"{reader.name}: {e}; decoded again by {PyAVReader.name} from frame 0"
    with PyAVReader(path, chunk_frames=chunk_frames, max_chunk_bytes=max_chunk_bytes,
                    device=device) as cpu:
        cpu.fallback = why
        return run(cpu)
