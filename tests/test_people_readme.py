"""The README's series workflow, run as written (its /tmp paths moved under pytest's tmp_path):
harvest, people, name two persons, add an episode, search by photo, remove a person, export.
Each line runs through the commands' own entry points in this process; `mkdir` and `mv` as
the shell would."""
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pyarrow.parquet as pq

README = Path(__file__).resolve().parents[1] / "README.md"


def series_block() -> list[list[str]]:
    text = README.read_text()
    section = text[text.index("## People across titles"):]
    body = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    out = []
    for line in body.strip().splitlines():
        out += [shlex.split(part) for part in line.split(" && ")]
    return out


def run(tokens: list[str]) -> int:
    prog, args = tokens[0], tokens[1:]
    if prog == "mkdir":
        for p in args[1:] if args[0] == "-p" else args:
            os.makedirs(p, exist_ok=True)
        return 0
    if prog == "mv":
        src, dst = args
        shutil.move(src, os.path.join(dst, os.path.basename(src)) if dst.endswith("/") else dst)
        return 0
    if prog == "harvest":
        from harvest.cli import main
        return main(args)
    if prog == "people":
        from training.people.cli import main
        return main(args)
    raise AssertionError(f"unexpected command in the README block: {tokens}")


def test_readme_series_workflow(tmp_path, ray_cluster, capsys):
    lines = series_block()
    progs = [t[0] for t in lines]
    subs = [t[1] for t in lines if t[0] == "people"]
    assert subs == ["build", "name", "name", "build", "search", "remove", "export"]
    assert progs.count("harvest") == 3
    moved = [[a.replace("/tmp/", f"{tmp_path}/") for a in t] for t in lines]
    store, out = tmp_path / "series-people", tmp_path / "series-out"
    named = None
    for tokens in moved:
        capsys.readouterr()
        assert run(tokens) == 0, tokens
        printed = capsys.readouterr().out
        if tokens[:2] == ["people", "name"] and tokens[2] == "1":
            named = {r["person_id"]: r["name"]
                     for r in pq.read_table(store / "people.parquet").to_pylist()}
            assert named[0] == "Ada" and named[1] == "Grace"
            first = {f: (store / "assignments" / f).read_bytes()
                     for f in os.listdir(store / "assignments")}
        if tokens[:2] == ["people", "build"] and named:           # the new episode joined
            head = json.loads((store / "store.json").read_text())
            assert len(head["titles"]) == 3
            rows = {r["person_id"]: r for r in
                    pq.read_table(store / "people.parquet").to_pylist()}
            assert rows[0]["name"] == "Ada" and rows[1]["name"] == "Grace"     # ids and names
            assert any(r["n_titles"] == 3 for r in rows.values())            # recurring cast
            for f, data in first.items():                          # old episodes untouched
                assert (store / "assignments" / f).read_bytes() == data
        if tokens[:2] == ["people", "search"]:
            top = printed.splitlines()[1].split()
            assert float(top[0]) > 0.5, printed                     # a close match first
            from training.cli import _track_identities
            ids = _track_identities(str(out / "shards"), str(tmp_path / "series" / "labels.csv"))
            got = {}
            for f in os.listdir(store / "assignments"):
                t = pq.read_table(store / "assignments" / f)
                got.update({(a, b): c for a, b, c in zip(*(t[k].to_pylist() for k in (
                    "title_id", "track_id", "person_id")))})
            id0 = [got[k] for k, who in ids.items() if who == "id0" and k in got]
            assert int(top[2]) == max(set(id0), key=id0.count), printed   # the photo's person
        if tokens[:2] == ["people", "remove"]:
            from harvest.dataset.validate import validate_main
            assert validate_main(str(out)) == 0
            rows = pq.read_table(store / "people.parquet").to_pylist()
            assert "Grace" not in [r["name"] for r in rows]
            assert (out / "takedown" / "audit.jsonl").exists()
    assert (tmp_path / "series-export" / "people.json").exists()
    assert (tmp_path / "series-who" / "index.html").exists()
