"""The README and docs/ as a reader meets them, checked in-process and offline (nothing is trained or downloaded):

- every command in a ```bash block that runs one of the project's scripts (``accelerate launch [options] X.py ...``,
  ``python X.py ...``, ``python -m examples....``) names a script that exists, gives it only flags its own argument
  parser accepts (read from the parser itself, caught at its parse call) and values that parser takes; the files
  ``accelerate launch --config_file`` and ``pip install -r`` name exist;
- every relative link and image resolves to a file, and every ``#anchor`` into a Markdown page matches a heading
  there (GitHub's slugs);
- the README stays a front door: at most 300 lines, and the quick start's two commands come first, unchanged.
"""

import argparse
import contextlib
import functools
import importlib
import importlib.util
import io
import os
import re
import shlex
import sys
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 300
QUICK_START = [
    "python -m pip install -r requirements.txt && python -m examples.digits.demo",
    "python -m pip install -r requirements-test.txt && python -m pytest",
]
# A script that passes the flags it does not know on to a trainer: benchmarks/estimate_memory.py hands them to
# train_amd_<--model>.py (its parse_known_args).
FORWARDS_TO_TRAINER = {"benchmarks/estimate_memory.py"}

FENCE = re.compile(r"^(```+|~~~+)\s*(\S*)")


def fenced_blocks(text):
    """(language, line number of its first line, lines) of every fenced code block."""
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening:
            fence, first_line, body = opening.group(1), i + 2, []
            i += 1
            while i < len(lines) and not lines[i].startswith(fence):
                body.append(lines[i])
                i += 1
            blocks.append((opening.group(2), first_line, body))
        i += 1
    return blocks


def prose(text):
    """The text outside fenced code blocks."""
    kept, fence = [], None
    for line in text.split("\n"):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
        elif fence is not None and line.startswith(fence):
            fence = None
        elif fence is None:
            kept.append(line)
    return "\n".join(kept)


def logical_lines(body, first_line):
    """(line number, line) with backslash-continued lines joined, as the shell reads them."""
    joined, start, pending = [], None, ""
    for offset, line in enumerate(body):
        if start is None:
            start = first_line + offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append((start, pending + line))
        start, pending = None, ""
    if pending:
        joined.append((start, pending))
    return joined


def split_commands(line):
    """A shell line's commands, each a list of tokens: comments dropped, split on ``&&``, ``||``, ``;`` and ``|``."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [command for command in commands if command]


def bash_commands(page):
    """(line number, tokens) of every command in the page's ```bash blocks."""
    found = []
    for language, first_line, body in fenced_blocks(page.read_text()):
        if language in ("bash", "sh", "shell", "console"):
            for number, line in logical_lines(body, first_line):
                found += [(number, tokens) for tokens in split_commands(line)]
    return found


def inline_commands(page):
    """Commands quoted as inline code in a page's prose (`python -m examples.toy2d.study`,
    `benchmarks/benchmark_step.py --model sit --device cuda`), as tokens: their values may be schematic
    (`[--wan_size 14B]`), so only their scripts and flag names are checked."""
    found = []
    for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", prose(page.read_text())):
        span = " ".join(span.split())
        if re.match(r"(python[\d.]* |accelerate launch )", span):
            found.append(shlex.split(span, comments=True))
        elif re.match(r"[\w.-]+/[\w./-]+\.py --", span):  # a script path and its flags: run with python
            found.append(["python", *shlex.split(span, comments=True)])
    return found


def entry_point(tokens):
    """(script path relative to the repository, the script's arguments) for a command that runs one of the project's
    Python entry points, else None."""
    while tokens and re.fullmatch(r"[A-Za-z_]\w*=\S*", tokens[0]):  # VAR=value before the command
        tokens = tokens[1:]
    if tokens[:2] == ["accelerate", "launch"]:
        scripts = [i for i, token in enumerate(tokens) if token.endswith(".py")]
        return (tokens[scripts[0]], tokens[scripts[0] + 1 :]) if scripts else ("<no script>", [])
    if tokens and re.fullmatch(r"python[\d.]*", os.path.basename(tokens[0])):
        if len(tokens) > 2 and tokens[1] == "-m":
            top = tokens[2].split(".")[0]
            if (REPO / top).is_dir() or (REPO / f"{top}.py").is_file():  # the project's, not pip, pytest or venv
                return tokens[2].replace(".", "/") + ".py", tokens[3:]
        elif len(tokens) > 1 and tokens[1].endswith(".py"):
            return tokens[1], tokens[2:]
    return None


class _Parsing(Exception):
    def __init__(self, parser):
        self.parser = parser


def _stop(parser, *args, **kwargs):
    raise _Parsing(parser)


def _load(path):
    name = path[:-3].replace("/", ".")
    if "/" not in path or path.startswith("examples/"):  # top-level modules, and packages with relative imports
        return importlib.import_module(name)
    # scripts/ and benchmarks/ are not packages (and "evaluate" is also a Hugging Face package): load from the file.
    spec = importlib.util.spec_from_file_location("docs_" + name.replace(".", "_"), REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def script_parser(path):
    """The ArgumentParser the script at ``path`` parses its command line with, caught at the moment it parses:
    its ``parse_args([])`` where it has one, else its ``main()``."""
    module = _load(path)
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_args", _stop),
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", _stop),
        mock.patch.object(sys, "argv", [path]),
    ):
        try:
            module.parse_args([]) if hasattr(module, "parse_args") else module.main()
        except _Parsing as parsing:
            return parsing.parser
    raise AssertionError(f"{path} returned without parsing a command line")


def parser_flags(parser):
    return {option for action in parser._actions for option in action.option_strings if option.startswith("--")}


def command_problems(tokens, values=True):
    """What is wrong with one shell command as the docs give it: an empty list if nothing is. ``values``: also parse
    the arguments with the script's parser (choices, types, required flags), not only their names."""
    problems = []
    for i, token in enumerate(tokens[:-1]):
        if (token in ("-r", "--requirement") and "pip" in tokens[:i]) or token == "--config_file":
            if not (REPO / tokens[i + 1]).is_file():
                problems.append(f"{token} {tokens[i + 1]}: no such file in the repository")
    run = entry_point(tokens)
    if run is None:
        return problems
    path, args = run
    if not (REPO / path).is_file():
        return problems + [f"{path}: no such script in the repository"]
    parser = script_parser(path)
    given = {arg.split("=", 1)[0] for arg in args if arg.startswith("--") and arg != "--"}
    accepted = parser_flags(parser)
    if path in FORWARDS_TO_TRAINER:
        known, _ = parser.parse_known_args(args)
        accepted |= parser_flags(script_parser(f"train_amd_{known.model}.py"))
    unknown = sorted(given - accepted)
    if unknown:
        return problems + [f"{path} does not accept {', '.join(unknown)}"]
    if values and path not in FORWARDS_TO_TRAINER:  # the values too: choices, types, nargs, required flags
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors), contextlib.suppress(SystemExit):
            parser.parse_args(args)
        if errors.getvalue():
            problems.append(f"{path}: {errors.getvalue().strip().splitlines()[-1]}")
    return problems


def slug(heading):
    """GitHub's anchor for a heading: its text (links as their text, code without backticks), lowercased, without
    punctuation other than - and _, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(page):
    """Every anchor a link may point at in a Markdown page: its headings' slugs (repeats numbered as GitHub does)
    and explicit ids."""
    text = prose(page.read_text())
    found, seen = set(), {}
    for line in text.split("\n"):
        heading = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    found |= set(re.findall(r'<[^>]+\b(?:id|name)="([^"]+)"', text))
    return found


def link_targets(text):
    """The targets of the Markdown links and images and the HTML src/href attributes, outside code."""
    text = re.sub(r"``.+?``|`[^`]+`", "", prose(text), flags=re.S)
    yield from re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    yield from re.findall(r'<(?:img|a)\b[^>]*\b(?:src|href)="([^"]+)"', text)


def link_problems(page, text=None):
    """Relative links and images of a page that do not resolve, and anchors that match no heading."""
    problems = []
    for target in link_targets(page.read_text() if text is None else text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading in {resolved.name} has the anchor #{anchor}")
    return problems


COMMANDS = [
    pytest.param(tokens, id=f"{page.relative_to(REPO)}:{number} {' '.join(tokens[:3])}")
    for page in PAGES
    for number, tokens in bash_commands(page)
]


INLINE_COMMANDS = [
    pytest.param(tokens, id=f"{page.relative_to(REPO)} `{' '.join(tokens[:4])}`")
    for page in PAGES
    for tokens in inline_commands(page)
]


@pytest.mark.parametrize("tokens", COMMANDS)
def test_every_command_runs_as_written(tokens):
    assert command_problems(tokens) == []


@pytest.mark.parametrize("tokens", INLINE_COMMANDS)
def test_every_inline_command_names_a_script_and_its_flags(tokens):
    assert command_problems(tokens, values=False) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_link_resolves(page):
    assert link_problems(page) == []


def test_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    language, first_line, body = fenced_blocks(text)[0]
    assert language == "bash"
    assert [line for _, line in logical_lines(body, first_line)][:2] == QUICK_START


def test_the_checks_catch_mistakes():
    """A wrong flag, a wrong value, a missing script or file, a broken link and a missing anchor are all reported."""
    good = "accelerate launch train_amd_sit.py --pretrained_model_name_or_path sit --operator dmd"
    assert command_problems(shlex.split(good)) == []
    assert command_problems(shlex.split("python -m examples.digits.prepare --teacher_steps 10")) == []  # a main()
    for bad in (
        good + " --no_such_flag 1",
        good.replace("--operator dmd", "--operator dmd2"),
        good.replace("train_amd_sit.py", "train_amd_sitt.py"),
        "accelerate launch --config_file examples/wan/missing.yaml train_amd_wan.py",
        "python -m pip install -r requirements-missing.txt",
        "python -m examples.digits.demo --no_such_flag",
    ):
        assert command_problems(split_commands(bad)[0]) != [], bad
    page = REPO / "docs" / "sdxl.md"
    assert link_problems(page, "[ok](gan.md#no-gan-term-for-wan) [ok](../README.md)") == []
    assert link_problems(page, "[missing](gan.md#no-such-heading)") != []
    assert len(link_problems(page, '[missing](no_such_page.md) <img src="digits/no_such.png">')) == 2
