"""README.md and docs/*.md hold to the code: the README's two fresh-machine commands are the ones
`.ci/run` runs, every command example parses with the project's real argparse parsers, every
relative link resolves, and docs/schema.md documents every shard column and metadata field.

Parsing only: no command here runs. The parsers come from the CLI modules' parser builders
(`harvest.cli.build_parser`, `training.cli.train_parser`, ...); a program without one (the
`bench/` scripts build theirs inside `main`) is called and stopped at its first `parse_args`,
before parsing, which hands back its real parser (`_parser_of`).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import sys
import io
import re
import shlex
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

# The README's two set-up-and-run commands for a fresh machine, byte for byte.
INSTALL_AND_RUN = (
    'python3 -m pip install torch==2.13.0 -e . && harvest sample /tmp/movieface-sample && harvest '
    'run --input /tmp/movieface-sample --output /tmp/movieface-out && harvest report '
    '/tmp/movieface-out --out /tmp/movieface-report && echo "open '
    '/tmp/movieface-report/index.html in a browser"')
INSTALL_AND_TEST = 'python3 -m pip install torch==2.13.0 -e ".[test]" && python3 -m pytest -q'

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SHELL = {"bash", "sh", "shell", "console"}
COMMANDS = ("harvest", "train", "evaluate", "cluster", "people", "export-head")
BENCH = {p.stem for p in (ROOT / "bench").glob("*.py")}


# --- reading the pages ---------------------------------------------------------------------------

def _blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, in order."""
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def _shell_commands(block: str) -> list[list[str]]:
    """The simple commands of a shell block as token lists: continuation lines joined, comments
    dropped, split at `&&`, `||`, `;` and `|`."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token in ("&&", "||", ";", "|", "&"):
                out.append(current)
                current = []
            else:
                current.append(token)
        out.append(current)
    return [c for c in out if c]


def _command(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(program, arguments) when the tokens run one of the project's commands (directly, as
    `python -m harvest`, `python jobs/X.py`, `python bench/X.py`, or after `ray job submit ... --`),
    else None."""
    if tokens[:3] == ["ray", "job", "submit"] and "--" in tokens:
        tokens = tokens[tokens.index("--") + 1:]
    while tokens and re.match(r"^[A-Za-z_]\w*=", tokens[0]):       # VAR=value prefixes
        tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] in ("python", "python3") and len(tokens) > 1:
        if tokens[1] == "-m" and tokens[2:3] == ["harvest"]:
            return "harvest", tokens[3:]
        m = re.fullmatch(r"(jobs|bench)/(\w+)\.py", tokens[1])
        if m and m.group(1) == "jobs" and m.group(2) in COMMANDS + ("people",):
            return m.group(2), tokens[2:]
        if m and m.group(1) == "bench" and m.group(2) in BENCH:
            return f"bench/{m.group(2)}", tokens[2:]
        return None
    if tokens[0] in COMMANDS:
        return tokens[0], tokens[1:]
    return None


def _examples() -> list[tuple[str, str, list[str]]]:
    """(where, program, arguments) of every command line in a shell block of the pages."""
    found = []
    for page in PAGES:
        for lang, body in _blocks(page.read_text()):
            if lang not in SHELL:
                continue
            for tokens in _shell_commands(body):
                cmd = _command(tokens)
                if cmd:
                    found.append((f"{page.name}: {' '.join(tokens)[:90]}", *cmd))
    return found


def _mentions() -> list[tuple[str, str, list[str]]]:
    """(where, program, tokens) of every command named outside shell blocks: inline code spans
    and synopsis lines of other fenced blocks (`harvest run --input URL [options]`)."""
    found = []
    for page in PAGES:
        text = page.read_text()
        lines = re.findall(r"`([^`\n]+)`", _prose(text))
        lines += [ln for lang, body in _blocks(text) if lang not in SHELL and lang != "python"
                  for ln in body.splitlines()]
        for line in lines:
            tokens = line.split()
            cmd = _command(tokens) if tokens else None
            if cmd and cmd[1] and not cmd[0].startswith("bench/"):
                found.append((f"{page.name}: {line[:90]}", *cmd))
    return found


# --- the real parsers ----------------------------------------------------------------------------

class _Captured(Exception):
    pass


def _parser_of(entry_point) -> argparse.ArgumentParser:
    """The parser ``entry_point`` builds, taken at its first ``parse_args`` call (which never
    runs), so nothing after parsing runs either."""
    def capture(self, *args, **kwargs):
        raise _Captured(self)
    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        try:
            entry_point([])
        except _Captured as c:
            return c.args[0]
    raise AssertionError(f"{entry_point} returned without parsing its arguments")


def _bench_main(name: str):
    spec = importlib.util.spec_from_file_location(f"_readme_bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # a script's dataclasses look their module up
    spec.loader.exec_module(module)
    return module.main


@functools.lru_cache(maxsize=None)
def parser(program: str) -> argparse.ArgumentParser:
    if program.startswith("bench/"):
        return _parser_of(_bench_main(program.split("/", 1)[1]))
    if program == "harvest":
        from harvest import cli
        return cli.build_parser() if hasattr(cli, "build_parser") else _parser_of(cli.parse)
    if program == "people":
        from training.people.cli import _parser
        return _parser()
    if program == "export-head":
        from training.cli import export_parser
        return export_parser()
    from training import cli
    builder = getattr(cli, f"{program}_parser", None)
    return builder() if builder else _parser_of(getattr(cli, f"{program}_main"))


def _subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def parse(program: str, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by the program's real parser; AssertionError with argparse's message."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return parser(program).parse_args(argv)
        except SystemExit:
            pass
    raise AssertionError(f"{program} {' '.join(argv)}\n{err.getvalue().strip()}")


def unknown_flags(program: str, tokens: list[str]) -> list[str]:
    """The ``--flags`` among ``tokens`` that the (sub)command does not define."""
    p = parser(program)
    subs = _subcommands(p)
    if subs:
        if not tokens or tokens[0] not in subs:
            return [f"subcommand {tokens[0] if tokens else '(none)'!r}"] \
                if tokens and re.fullmatch(r"[a-z]+", tokens[0]) else []
        p, tokens = subs[tokens[0]], tokens[1:]
    flags = re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(tokens))
    return [f for f in flags if f not in p._option_string_actions]


# --- (a) the two commands ------------------------------------------------------------------------

def test_readme_starts_with_the_two_fresh_machine_commands():
    shell = [body.strip() for lang, body in _blocks(README.read_text()) if lang in SHELL]
    assert shell[:2] == [INSTALL_AND_RUN, INSTALL_AND_TEST]


def test_ci_runs_the_readme_test_command():
    shell = [body.strip() for lang, body in _blocks(README.read_text()) if lang in SHELL]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert shell[1] in [line.strip() for line in ci]


# --- (b) every example parses --------------------------------------------------------------------

EXAMPLES = _examples()
MENTIONS = _mentions()


def test_pages_have_examples_of_every_command():
    assert {program for _, program, _ in EXAMPLES} >= set(COMMANDS)


@pytest.mark.parametrize("where, program, argv", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_parses(where, program, argv):
    parse(program, argv)
    assert unknown_flags(program, argv) == []           # argparse also takes abbreviations


@pytest.mark.parametrize("where, program, tokens", MENTIONS, ids=[m[0] for m in MENTIONS])
def test_mentioned_flags_exist(where, program, tokens):
    assert unknown_flags(program, tokens) == []


def test_a_wrong_flag_fails():
    """The checks above catch a misspelt flag, a wrong value, an abbreviation and a flag of
    another command."""
    args = ["run", "--input", "/v", "--output", "/o"]
    assert parse("harvest", args).input == "/v"
    with pytest.raises(AssertionError, match="--det-strides"):
        parse("harvest", args + ["--det-strides", "2"])
    with pytest.raises(AssertionError, match="invalid int"):
        parse("harvest", args + ["--workers", "N"])
    assert unknown_flags("harvest", args + ["--det-strid", "2"]) == ["--det-strid"]
    with pytest.raises(AssertionError, match="invalid choice"):
        parse("cluster", ["--shards", "/s", "--output", "/o", "--method", "kmeans"])
    assert unknown_flags("harvest", ["run", "--crops", "all", "--epochs", "3"]) == ["--epochs"]
    assert unknown_flags("train", ["--head", "bcl", "--epochs", "3"]) == []
    assert unknown_flags("harvest", ["rn", "--input"]) == ["subcommand 'rn'"]


# --- (c) links resolve ---------------------------------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", _prose(page.read_text()), re.M):
        slug = _slug(m.group(1))
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return out


def _links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page):
    broken = []
    for link in _links(page):
        if re.match(r"^[a-z]+:", link):
            continue                                            # http(s), mailto
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(link)
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(link)
    assert broken == []


def test_readme_links_every_doc():
    linked = {(README.parent / link.partition("#")[0]).resolve()
              for link in _links(README) if link.startswith("docs/")}
    expected = {"benchmarks.md", "deployment.md", "methods.md", "schema.md"}
    assert expected <= {p.name for p in DOCS}
    assert {p.resolve() for p in DOCS} <= linked


# --- the schema page documents the contract ------------------------------------------------------

def _table(page: Path, section: str) -> list[list[str]]:
    """Rows (cells) of the first table under heading ``section``."""
    text = _prose(page.read_text())
    start = re.search(rf"^#+\s+{re.escape(section)}\s*$", text, re.M)
    assert start, f"no section {section!r} in {page.name}"
    rows = []
    for line in text[start.end():].splitlines():
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif rows:
            break
    return rows[2:]                                         # no header, no |---| line


def test_schema_page_documents_every_shard_column():
    from harvest.dataset.schema import COLUMN_DESCRIPTIONS, shard_schema
    schema = shard_schema(128)
    rows = _table(ROOT / "docs" / "schema.md", "Shard columns")
    names = [r[0].strip("`") for r in rows]
    assert names == schema.names
    assert set(names) == set(COLUMN_DESCRIPTIONS)
    for name, type_cell in ((r[0].strip("`"), r[1]) for r in rows):
        assert ("nullable" in type_cell) == schema.field(name).nullable, name


def test_schema_page_documents_metadata_and_manifest():
    from harvest.config import HarvestConfig
    from harvest.dataset.schema import CROP_METADATA, MANIFEST_FIELDS, METADATA_FIELDS
    text = (ROOT / "docs" / "schema.md").read_text()
    fields = {*METADATA_FIELDS, *CROP_METADATA, *HarvestConfig().settings(), *MANIFEST_FIELDS,
              "attempts", "decoder", "decoder_fallback"}
    assert sorted(f for f in fields if f"`{f}`" not in text) == []


def test_schema_page_documents_the_cluster_output():
    from training.clustering.cluster_titles import SCHEMA
    rows = _table(ROOT / "docs" / "schema.md", "Cluster output")
    assert [r[0].strip("`") for r in rows] == SCHEMA.names


def test_readme_names_every_shard_column():
    from harvest.dataset.schema import shard_schema
    text = README.read_text()
    assert [n for n in shard_schema(128).names if f"`{n}`" not in text] == []


def test_readme_states_the_cluster_default():
    """The README's one statement of `cluster`'s default method is the code's."""
    from training.clustering.cluster_titles import DEFAULT_METHOD
    stated = re.findall(r"\*\*Default method:\*\* `([^`]+)`", README.read_text())
    assert stated == [DEFAULT_METHOD]
