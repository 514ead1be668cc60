"""A newcomer's first hour (issue #20): mistakes are caught before any work (before Ray starts)
and reported in one line with exit 2 by every command; help texts say what each option does and
its default; the console says what Ray is doing and keeps its chatter out; evaluate's table and
inspect's tables say what they mean; pandas keeps the shards' nullable integers.

The CLIs run as the README shows them (subprocess ``harvest ...`` / ``train ...``) where the test
is about the console or about Ray not starting; else through their ``main(argv)``. Synthetic
shards (``training.synthetic``) stand in for a harvest where no face matters."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import REPO, write_no_face_video

from harvest import cli as harvest_cli
from harvest.dataset import schema as S
from harvest.config import HarvestConfig, RunOptions
from training import cli as training_cli
from training.synthetic import SyntheticSpec, write_dataset

RAY_STARTING = "starting a local Ray cluster"
ENTRY = {"harvest": "harvest.cli:main", "train": "training.cli:train_main",
         "evaluate": "training.cli:evaluate_main", "cluster": "training.cli:cluster_main"}


def run_cli(command: str, *args, env: dict | None = None, timeout: float = 120):
    """An installed console script (pyproject's [project.scripts]) run as a subprocess from the
    repository root, through this interpreter."""
    module, func = ENTRY[command].split(":")
    code = f"import sys; from {module} import {func}; sys.argv[0] = {command!r}; sys.exit({func}())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def one_line_usage_error(r, *words) -> str:
    """The run exited 2 with one line on stderr naming ``words``, no traceback, before Ray."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and RAY_STARTING not in r.stderr + r.stdout
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """Two synthetic titles (title000, title001) with track- and box-level labels."""
    return write_dataset(str(tmp_path_factory.mktemp("syn")), 2,
                         SyntheticSpec(dim=8, tracks_per_title=16), seed=4)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    write_no_face_video(str(d / "a.mp4"), frames=10)
    return d


# --- help --------------------------------------------------------------------------------------

def _parsers() -> dict[str, argparse.ArgumentParser]:
    top = harvest_cli.build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    out = {f"harvest {name}": p for name, p in sub.choices.items()}
    out.update(train=training_cli.train_parser(), evaluate=training_cli.evaluate_parser(),
               cluster=training_cli.cluster_parser())
    return out


def _shown(default) -> list[str]:
    return [str(d) for d in default] if isinstance(default, list) else [str(default)]


def test_every_option_of_every_command_has_help_showing_its_default():
    for command, parser in _parsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"{command} {name}: no help text"
            text = formatter._expand_help(action)
            if action.default not in (None, False, argparse.SUPPRESS):
                for d in _shown(action.default):
                    assert d in text, f"{command} {name}: help does not show its default {d}"


def test_harvest_run_defaults_and_help_come_from_the_config_dataclasses():
    from harvest.config import help_of
    run = _parsers()["harvest run"]
    seen = 0
    for action in run._actions:
        for cls in (HarvestConfig, RunOptions):
            field = action.dest
            if field in cls.__dataclass_fields__ and action.dest != "det_stride":
                assert action.default == getattr(cls(), field), field
                assert action.help.startswith(help_of(cls, field)), field
                seen += 1
    assert seen >= 22          # every content setting but the stride, every execution option


# --- harvest: usage mistakes before any work --------------------------------------------------

def test_harvest_output_that_is_a_file_is_refused_before_any_work(video_dir, tmp_path):
    afile = tmp_path / "afile.txt"
    afile.write_text("hi\n")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    r = run_cli("harvest", "run", "--input", str(video_dir), "--output", str(afile),
                env={"TMPDIR": str(scratch)})
    one_line_usage_error(r, str(afile), "existing file")
    assert afile.read_text() == "hi\n" and not any(scratch.iterdir())   # no scratch dir left


@pytest.mark.parametrize("pattern", ["{empty}", "{empty}/*.mp4"])
def test_harvest_with_no_video_says_so_and_creates_nothing(tmp_path, pattern):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not a video")
    out = tmp_path / "out"
    r = run_cli("harvest", "run", "--input", pattern.format(empty=empty), "--output", str(out))
    line = one_line_usage_error(r, "no video found")
    if "*" not in pattern:
        assert ".mp4" in line and ".mkv" in line      # the extensions searched
    assert not out.exists()


@pytest.mark.parametrize("command", ["inspect", "validate", "card", "report"])
def test_harvest_commands_on_a_missing_output_exit_2(tmp_path, capsys, command):
    missing = str(tmp_path / "no-such-output")
    extra = ["--out", str(tmp_path / "rep")] if command == "report" else []
    assert harvest_cli.main([command, missing, *extra]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"harvest {command}: no such output: {missing}"
    assert not os.path.exists(missing) and not (tmp_path / "rep").exists()


# --- train / evaluate / cluster: paths checked before Ray, one line, exit 2 --------------------

def test_misspelled_paths_are_one_line_before_ray_in_every_training_command(syn, tmp_path):
    shards = syn["shards"]
    one_line_usage_error(run_cli("train", "--head", "bcl", "--shards", shards + "x", "--output",
                                 str(tmp_path / "runs")), "--shards", shards + "x")
    one_line_usage_error(run_cli("evaluate", "--shards", shards, "--labels",
                                 syn["track_labels"] + "x"), "--labels")
    one_line_usage_error(run_cli("cluster", "--shards", shards, "--output", str(tmp_path / "c"),
                                 "--head", str(tmp_path / "no-such-run")), "--head")


@pytest.mark.parametrize("command,argv,words", [
    ("train", ["--head", "bcl", "--shards", "{shards}", "--output", "{tmp}/r", "--labels",
               "{tmp}/nope.csv"], ["--labels"]),
    ("train", ["--head", "bcl", "--shards", "{tmp}", "--output", "{tmp}/r"],
     ["--shards", "no harvested shard"]),
    ("train", ["--head", "bcl", "--shards", "{shards}", "--output", "{tmp}/r",
               "--val-titles", "nope.mp4"], ["--val-titles", "nope.mp4"]),
    ("evaluate", ["--shards", "{shards}x", "--labels", "{labels}"], ["--shards"]),
    ("evaluate", ["--shards", "{shards}", "--labels", "{labels}", "--head", "{tmp}/h"],
     ["--head"]),
    ("evaluate", ["--shards", "{shards}", "--labels", "{labels}", "--titles", "nope"],
     ["--titles", "nope"]),
    ("cluster", ["--shards", "{shards}x", "--output", "{tmp}/c"], ["--shards"]),
    ("cluster", ["--shards", "{shards}", "--output", "{tmp}/afile"], ["--output", "file"]),
])
def test_training_usage_mistakes_exit_2_with_one_line(syn, tmp_path, capsys, command, argv,
                                                      words):
    (tmp_path / "afile").write_text("x")
    fill = dict(shards=syn["shards"], labels=syn["track_labels"], tmp=str(tmp_path))
    main = getattr(training_cli, f"{command}_main")
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{command}: "), err
    for w in words:
        assert w in err[0]


def test_evaluate_with_labels_naming_no_harvested_title(syn, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("title,track_id,identity\nother_movie.mp4,0,alice\n")
    assert training_cli.evaluate_main(["--shards", syn["shards"], "--labels", str(labels)]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "no labelled title found" in err and "other_movie.mp4" in err
    assert "title000" in err and "title001" in err           # the titles that exist


def test_evaluate_table_shows_pcr(syn, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert training_cli.evaluate_main(["--shards", syn["shards"], "--labels", syn["track_labels"],
                                       "--method", "hac-k", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines[0].split()
    rows = {(v[0], v[1]): v for v in (line.split() for line in lines[1:])}
    assert "pcr" in header
    for r in json.loads(out.read_text())["results"]:
        assert rows[(r["title"], r["method"])][header.index("pcr")] == f"{r['pcr']:.4f}"


# --- train: a second run of the same command is a choice -------------------------------------

def _fake_finished_run(runs, name: str, epoch: int) -> str:
    ckpt = runs / name / "checkpoint_000000"
    ckpt.mkdir(parents=True)
    (ckpt / "head.json").write_text(json.dumps(dict(head=name, in_dim=8, epoch=epoch,
                                                    val_loss=0.5)))
    (ckpt / "state.pt").write_bytes(b"")
    return str(runs / name)


def test_train_again_on_an_existing_run_is_refused_naming_the_choices(syn, tmp_path):
    run = _fake_finished_run(tmp_path / "runs", "bcl", 7)
    r = run_cli("train", "--head", "bcl", "--shards", syn["shards"], "--output",
                str(tmp_path / "runs"), "--epochs", "1")
    line = one_line_usage_error(r, run, "epoch 7", "--resume", "--overwrite", "--name")
    assert "Traceback" not in line and os.path.exists(run)        # nothing deleted


def test_train_overwrite_starts_over_and_resume_continues(syn, tmp_path, capsys, ray_cluster):
    runs = tmp_path / "runs"
    run = _fake_finished_run(runs, "imptriplet", 40)
    argv = ["--head", "imptriplet", "--shards", syn["shards"], "--output", str(runs),
            "--workers", "1", "--epochs", "1", "--batch-size", "64", "--val-titles", "title001"]
    assert training_cli.train_main(argv + ["--overwrite"]) == 0
    out = capsys.readouterr()
    assert f"deleting the earlier run {run}" in out.err and "'epoch': 1" in out.out
    from training.checkpoints import existing_run
    assert existing_run(str(runs), "imptriplet")["epoch"] == 1       # trained anew, 1 epoch
    assert training_cli.train_main(argv + ["--resume"]) == 0
    out = capsys.readouterr()
    assert f"resuming the run {run} (checkpointed up to epoch 1)" in out.err
    assert "already finished at epoch 1: nothing was trained" in out.err
    assert "'epoch': 1" in out.out


# --- Ray start-up on the console --------------------------------------------------------------

def test_ray_start_says_what_happens_and_keeps_rays_chatter_out(tmp_path):
    code = ("from harvest.run.raystart import init_ray; import ray, logging; "
            "init_ray(num_cpus=1); logging.getLogger('ray').warning('a real warning'); "
            "ray.shutdown()")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=180, env=env)
    assert r.returncode == 0, r.stderr
    console = r.stdout + r.stderr
    assert RAY_STARTING in console and "ray: ready (1 CPUs" in console
    assert "dashboard" not in console.lower() and "8265" not in console
    assert "Token authentication is enabled" not in console
    assert "a real warning" in console                   # Ray's warnings still show


# --- what the tables say ----------------------------------------------------------------------

def test_inspect_counts_valid_tracks_in_both_tables(syn, tmp_path, capsys):
    from harvest.dataset import storage
    from harvest.dataset.inspect_output import inspect_main
    fs, root = storage.open_fs(str(tmp_path))
    fs.makedirs(f"{root}/shards")
    valid = {}
    for t in ("title000", "title001"):
        src = os.path.join(syn["shards"], f"{t}.parquet")
        table = pq.read_table(src)
        pq.write_table(table, f"{root}/shards/{t}.parquet")
        valid[t] = sum(table["is_valid"].to_pylist())
        storage.write_record(fs, root, {
            "title_id": t, "source": f"file:///v/{t}.mp4", "status": "done", "error": None,
            "frames": 10, "faces": 1, "tracks": table.num_rows, "valid_tracks": valid[t],
            "cannot_link_pairs": 0, "seconds": 1.0})
    assert inspect_main(str(tmp_path)) == 0
    manifest, shards = capsys.readouterr().out.split("\nShards:")
    for text in (manifest, shards):
        lines = [line.split() for line in text.splitlines() if line.startswith(("title", "TOTAL"))]
        header = lines[0]
        rows = {v[0]: v for v in lines[1:]}
        for t, n in valid.items():
            assert rows[t][header.index("valid")] == str(n), (text, t)
    rows = sum(pq.read_metadata(os.path.join(syn["shards"], f"{t}.parquet")).num_rows
               for t in valid)
    assert 0 < sum(valid.values()) < rows        # a count, not a fraction, on both tables


# --- pandas -----------------------------------------------------------------------------------

def test_read_pandas_keeps_nullable_integers(syn):
    import pandas as pd

    from harvest.dataset.dataset_io import read_pandas
    table = pq.read_table(syn["shards"], columns=["track_id", "hard_negative"])
    nulls = table["hard_negative"].null_count
    assert 0 < nulls < table.num_rows                   # some tracks have no hard negative
    assert pd.read_parquet(syn["shards"])["hard_negative"].dtype == "float64"   # the trap
    for url in (syn["shards"], os.path.dirname(syn["shards"])):   # shards dir or output root
        df = read_pandas(url, columns=["track_id", "hard_negative"])
        assert isinstance(df["hard_negative"].dtype, pd.ArrowDtype)
        assert str(df["hard_negative"].dtype) == "int64[pyarrow]"
        assert int(df["hard_negative"].isna().sum()) == nulls
        assert sorted(df["hard_negative"].dropna().astype(int).tolist()) == sorted(
            v for v in table["hard_negative"].to_pylist() if v is not None)
    full = read_pandas(syn["shards"])
    assert list(full.columns) == S.shard_schema(8).names
