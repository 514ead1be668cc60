"""The end-of-run summary table (per title and totals)."""
from __future__ import annotations

from harvest.dataset.schema import COUNT_FIELDS
from harvest.tables import RULE, text_table

_COLUMNS = ("title", "status") + COUNT_FIELDS + ("seconds", "frames/s")


def summary_table(records: list[dict], skipped: set | None = None) -> str:
    skipped = skipped or set()
    rows = []
    for r in records:
        status = r["status"] + (" (skipped)" if r["title_id"] in skipped else "")
        rows.append([r["title_id"][:40], status] + [str(r.get(k, 0)) for k in COUNT_FIELDS]
                    + [f"{r.get('seconds', 0.0):.1f}", _rate(r.get("frames"), r.get("seconds"))])
    totals = ["TOTAL", f"{sum(r['status'] == 'done' for r in records)}/{len(records)} done"]
    totals += [str(sum(int(r.get(k) or 0) for r in records)) for k in COUNT_FIELDS]
    seconds = sum(float(r.get("seconds") or 0) for r in records)
    totals += [f"{seconds:.1f}", _rate(sum(int(r.get("frames") or 0) for r in records), seconds)]
    lines = [text_table([_COLUMNS, RULE, *rows, RULE, totals])]
    errors = [f"  {r['title_id']}: {r['error'].splitlines()[0]}" for r in records
              if r["status"] != "done" and r.get("error")]
    return "\n".join(lines + (["errors:"] + errors if errors else []))


def _rate(frames, seconds) -> str:
    """Frames harvested per second of the title's own run time ("-" when nothing ran)."""
    return f"{frames / seconds:.1f}" if frames and seconds else "-"
