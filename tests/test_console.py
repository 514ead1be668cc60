"""The console commands end their process with the command's own status (harvest/console.py):
a process that imported torch and read Parquet through fsspec used to abort in interpreter
finalisation in a third to a half of runs (exit 134 after the work was done)."""
import subprocess
import sys

from conftest import need  # noqa: F401  (the tests' sys.path set-up)

READS = ("import torch, fsspec, pyarrow as pa, pyarrow.parquet as pq, sys\n"
         "p = sys.argv[1]\n"
         "pq.write_table(pa.table({'a': list(range(1000))}), p)\n"
         "with fsspec.filesystem('file').open(p, 'rb') as f:\n"
         "    pq.read_table(f)\n")


def _status(code: str, *args) -> int:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True).returncode


def test_commands_exit_with_their_status(tmp_path):
    path = str(tmp_path / "t.parquet")
    ended = READS + "from harvest.console import finish\nfinish(int(sys.argv[2]))\n"
    assert [_status(ended, path, "0") for _ in range(8)] == [0] * 8
    assert [_status(ended, path, "2") for _ in range(4)] == [2] * 4


def test_run_maps_a_command_to_its_status(tmp_path):
    code = ("import sys\nfrom harvest.console import run\n"
            "sys.argv = ['people', 'name', '1', 'x', '--output', sys.argv[1]]\n"
            "run('training.people.cli', 'main')\n")
    assert _status(code, str(tmp_path / "no-store")) == 2          # a usage error: 2
    code = ("import sys\nfrom harvest.console import run\n"
            "sys.argv = ['harvest', '--help']\nrun('harvest.cli', 'main')\n")
    assert _status(code) == 0                                      # argparse's SystemExit(0)
