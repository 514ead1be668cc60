"""Progress of long titles: the running actor answers progress() while it harvests, the driver
passes each running title's position and frames/s on about every second, and the summary table
has frames/s per title. Assertions are on content (monotone positions, totals), never on timing."""
import re
import shutil

from conftest import CROWD, FACE_PACK, need
from harvest.cli import progress_line
from harvest.config import HarvestConfig, RunOptions
from harvest.video.decode import MAX_CHUNK_BYTES
from harvest.reports.summary import summary_table
from harvest.run.runner import harvest_sources, plan_run


def test_running_title_reports_increasing_positions(ray_cluster, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(need(CROWD), src / "crowd.mp4")
    out = tmp_path / "out"
    config = HarvestConfig(models=need(FACE_PACK))
    options = RunOptions(workers=1, chunk_frames=8, progress=False)
    chunk = min(8, MAX_CHUNK_BYTES // (1920 * 1080 * 3))      # 1080p: the byte cap gives 4
    plan = plan_run(str(src), str(out), config, options)
    (title,) = [s.title_id for s in plan.todo]
    polls, lines = [], []

    def on_progress(positions):
        polls.append(positions)
        lines.append(progress_line(positions))

    (record,) = harvest_sources(plan, str(out), config, options, on_progress=on_progress)
    assert record["status"] == "done" and record["frames"] == 105

    seen = [p for poll in polls for p in poll if p["title_id"] == title]
    frames = [p["frames"] for p in seen]
    assert frames == sorted(frames), frames                   # positions never go back
    moving = sorted({f for f in frames if 0 < f < 105})
    assert len(moving) >= 2, frames                           # seen mid-title, and moving
    assert all(f % chunk == 0 for f in moving)                # chunk ends
    assert {p["total"] for p in seen if p["frames"]} == {105}
    assert all(p["fps"] > 0 for p in seen if p["frames"]) and seen[0]["attempt"] == 1
    shown = [x for x in lines if "/105 " in x]
    assert shown and re.search(rf"{title[:20]} \d+/105 \d+% [\d.]+ f/s", shown[0]), lines

    table = summary_table([record])
    header, _, row = table.splitlines()[:3]
    assert header.split()[-1] == "frames/s"
    assert row.split()[-1] == f"{105 / record['seconds']:.1f}"
