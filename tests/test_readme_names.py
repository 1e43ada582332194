"""Every command-line flag, config key and RPC the README names exists in the code.

The README is read as markdown: fenced code blocks (with their language), and the prose between them, in
which inline code spans (single backticks, possibly wrapped over lines, ``\\|`` read as ``|``) are found.
Each ``## `` heading starts a section; a table row is read on its own, cell by cell.

(a) Flags and subcommands (checked against ``build_parser()``):

* A command line is an inline span starting with ``ostracon `` (or ``$ ostracon ``), or, in a ``bash``/
  ``sh``/``shell``/``zsh``/``console`` code block (and on ``$ `` lines of a block with no language), a
  shell segment whose first word is ``ostracon`` -- segments are split at ``&&``, ``||``, ``|``, ``;`` and
  ``&``, after joining ``\\``-continued lines, dropping ``#`` comments, the ``$ `` prompt, redirections and
  leading ``NAME=value`` environment assignments. Options before the subcommand must be the top-level
  parser's; the subcommand must exist (an all-caps placeholder such as ``COMMAND`` is not checked); every
  ``-x``/``--flag`` after it must be an option of that subcommand, except after a positional of a
  subcommand whose arguments pass through (``bench NAME ARGS…``). An option value written in lower case
  (``--backend local|ray``: each ``|``-alternative) must be one of the option's choices, if it has any; a
  choice of the subcommand's first positional likewise (``bench robustness|scale``).
* Command lines from code blocks must also parse: ``parse_args`` runs on them, with an all-caps placeholder
  value (``DIR``) replaced by a valid one where the option is typed (``--port PORT``: ``0``) or has
  choices (its first choice).
* An inline span starting with a subcommand's name followed by an option (``unlearn --resume``,
  ``train -o``) is read as that subcommand's command line.
* A span starting with ``-`` (a bare flag, ``--wait``, ``--tls-cert/--tls-key``) is checked only where
  its command is unambiguous or the section is about ostracon's own command line: in a row of the
  command table it must be an option of the row's command (the first cell's ``ostracon SUB``; the
  top-level parser for ``ostracon [-v] COMMAND``); elsewhere in the sections listed in
  ``FLAG_SECTIONS`` it must be an option of some subcommand or of the top-level parser. Bare flags in
  other sections (benchmarks' script options, pytest's ``-m``, SQLite's ``-wal``) are not ostracon's and
  are skipped.

(b) Config keys (checked against ``config_reference``'s walk of the schema): every dotted name in an
inline span that starts with a section (``data.``, ``model.``, ``training.``, ``byzantine.``,
``unlearning.``, ``backend.``; not part of a path like ``bench/unlearning.py`` nor a call like
``model.eval()``), and every ``--set KEY=`` key of a command line, must be a leaf key or a (nested) table
of the schema, or a key below a free-form table (``model.params.hidden``). A ``<placeholder>`` segment
(``model.params.<name>``, ``unlearning.<method>.<param>``) stands for any existing name at that place.

(c) RPCs (checked against ``coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"]``): a name written
``Coordinator/Name`` anywhere, ``.Name(`` in the gRPC API section or after a receiver named ``*stub``
anywhere, must be an RPC. In the gRPC API section, a CamelCase name opening an inline span
(``Delete(DeleteRequest) -> Operation``, ``GetOperation``) or followed by ``(`` in its prose must be an
RPC, or else a message or enum of ``coordinator.proto`` or a public name of the Python client
(``ostracon.cluster``, ``ostracon.cluster.service.client``) -- anything else is reported as an unknown RPC.
An RPC span there written with arguments must name the RPC's real request type (``Delete(DeleteRequest)``),
request fields (``ListOperations(page_size, page_token)``, ``Predict(Tensor inputs)``) and response type
(``-> Operation``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ostracon.cluster.cli import build_parser
from ostracon.cluster.config import reference as config_reference

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")

FLAG_SECTIONS = ("", "Quickstart", "Command line", "gRPC API", "Configuration")  # "": before the first ##
GRPC_SECTION = "gRPC API"
SHELL_LANGUAGES = ("bash", "sh", "shell", "zsh", "console")
SECTION_NAMES = ("data", "model", "training", "byzantine", "unlearning", "backend")


# ----- the README as markdown


@dataclass
class Span:
    text: str  # the inline code, whitespace runs as one space, "\|" as "|"
    line: int
    section: str
    row_command: str | None = None  # in a command-table row: its command ("" = top level)
    in_row: bool = False


@dataclass
class Block:
    language: str
    text: str
    line: int  # of its first content line
    section: str


@dataclass
class Prose:
    text: str
    line: int
    section: str


@dataclass
class Readme:
    spans: list[Span] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    prose: list[Prose] = field(default_factory=list)


_SPAN = re.compile(r"`((?:[^`\n]|\n(?!\s*\n))+)`")


def _spans(text: str, line: int, section: str) -> list[Span]:
    out = []
    for match in _SPAN.finditer(text):
        inner = " ".join(match.group(1).replace("\\|", "|").split())
        out.append(Span(inner, line + text.count("\n", 0, match.start()), section))
    return out


def parse_readme(text: str) -> Readme:
    readme = Readme()
    section = ""
    lines = text.split("\n")
    i = 0
    paragraph: list[str] = []
    paragraph_start = 0

    def flush():
        if paragraph:
            chunk = "\n".join(paragraph)
            readme.prose.append(Prose(chunk, paragraph_start, section))
            readme.spans.extend(_spans(chunk, paragraph_start, section))
            paragraph.clear()

    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", line)
        if fence:
            flush()
            marker, language = fence.group(1), fence.group(2).lower()
            body = []
            start = i + 2
            i += 1
            while i < len(lines) and not lines[i].startswith(marker):
                body.append(lines[i])
                i += 1
            readme.blocks.append(Block(language, "\n".join(body), start, section))
            i += 1
            continue
        if line.startswith("#"):  # a heading; "## X" starts section X
            flush()
            heading = re.match(r"^##\s+(.*?)\s*$", line)
            if heading:
                section = heading.group(1)
            readme.spans.extend(_spans(line, i + 1, section))
        elif line.startswith("|"):
            flush()
            readme.prose.append(Prose(line, i + 1, section))
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            first = _spans(cells[0], i + 1, section) if cells else []
            command = None
            if first and re.match(r"^ostracon(\s|$)", first[0].text):
                words = [w for w in first[0].text.split()[1:] if not w.startswith(("-", "["))]
                command = words[0] if words and not words[0].isupper() else ""
            for span in _spans(line, i + 1, section):
                span.in_row, span.row_command = True, command
                readme.spans.append(span)
        elif not line.strip():
            flush()
        else:
            if not paragraph:
                paragraph_start = i + 1
            paragraph.append(line)
        i += 1
    flush()
    return readme


DOC = parse_readme(README)


# ----- the command line


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


PARSER = build_parser()
SUBPARSERS = _subparsers(PARSER)
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
LOWER_VALUE = re.compile(r"^[a-z0-9_|-]+$")


def _is_placeholder(word: str) -> bool:
    return not re.search(r"[a-z]", word)


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return parser._option_string_actions.get(flag)


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def check_synopsis(words: list[str], where: str, *, subcommand: str | None = None) -> list[str]:
    """Problems of one command line (``words`` after ``ostracon``, or after the subcommand if given)."""
    problems: list[str] = []
    tokens = []
    for word in words:
        word = word.replace("[", " ").replace("]", " ").replace("…", " ").replace("...", " ")
        tokens.extend(t for t in word.split() if t != "|")
    parser = PARSER
    if subcommand is not None:
        parser = SUBPARSERS[subcommand]
    positionals = 0
    i = 0
    while i < len(tokens):
        token = tokens[i]
        flag = FLAG.match(token)
        if token.startswith("-") and flag:
            name = flag.group(1)
            action = _option(parser, name)
            if action is None:
                command = f"ostracon {subcommand}" if subcommand else "ostracon"
                problems.append(f"{where}: `{command}` has no option {name}")
            elif _takes_value(action) and "=" not in token and i + 1 < len(tokens) \
                    and not tokens[i + 1].startswith("-"):
                value = tokens[i + 1]
                i += 1
                if action.choices and LOWER_VALUE.match(value):
                    for choice in value.split("|"):
                        if choice and choice not in action.choices:
                            problems.append(f"{where}: {name} {choice!r} is not one of {sorted(action.choices)}")
            i += 1
            continue
        if subcommand is None:  # the subcommand
            if not _is_placeholder(token):
                if token not in SUBPARSERS:
                    problems.append(f"{where}: `ostracon {token}`: no such subcommand ({', '.join(SUBPARSERS)})")
                    return problems
                subcommand, parser = token, SUBPARSERS[token]
            else:
                return problems  # `ostracon [-v] COMMAND`: nothing more to check
            i += 1
            continue
        positional = [a for a in parser._actions if not a.option_strings]
        if positionals < len(positional):
            action = positional[positionals]
            if action.nargs == argparse.REMAINDER:
                return problems
            if action.choices and LOWER_VALUE.match(token):
                for choice in token.split("|"):
                    if choice and choice not in action.choices:
                        problems.append(f"{where}: `ostracon {subcommand}` {action.dest} {choice!r} is not one "
                                        f"of {sorted(action.choices)}")
            positionals += 1
            if positionals < len(positional) and positional[positionals].nargs == argparse.REMAINDER:
                return problems  # bench NAME ARGS…: the rest is the benchmark's
        i += 1
    return problems


_SEPARATORS = {"&&", "||", "|", ";", "&"}
_REDIRECTS = {">", ">>", "<", ">&", "&>", "<<", "<&", ">|"}


def shell_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line: operators split, comments, redirections, env assignments gone."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: not a line we can read
        return []
    commands: list[list[str]] = [[]]
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
            continue
        if token in _SEPARATORS:
            commands.append([])
        elif token in _REDIRECTS:
            if commands[-1] and commands[-1][-1].isdigit():
                commands[-1].pop()  # the 2 of 2>
            skip_next = True
        else:
            commands[-1].append(token)
    out = []
    for words in commands:
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


def code_block_command_lines(doc: Readme) -> list[tuple[list[str], str]]:
    """(words after ``ostracon``, location) for every ostracon command in the README's shell code."""
    found = []
    for block in doc.blocks:
        if block.language not in SHELL_LANGUAGES and block.language not in ("", "text"):
            continue
        prompted_only = block.language in ("", "text", "console")
        logical: list[tuple[int, str]] = []  # (first line number, the line with its continuations joined)
        pending = None
        for offset, raw in enumerate(block.text.split("\n")):
            if pending is None:
                pending = (block.line + offset, "")
            text = pending[1] + raw
            if text.endswith("\\"):
                pending = (pending[0], text[:-1] + " ")
                continue
            logical.append((pending[0], text))
            pending = None
        if pending is not None:
            logical.append(pending)
        for number, line in logical:
            stripped = line.strip()
            if stripped.startswith("$ "):
                stripped = stripped[2:]
            elif prompted_only:
                continue
            for words in shell_commands(stripped):
                if words[0] == "ostracon":
                    found.append((words[1:], f"README.md:{number} ({' '.join(stripped.split())[:70]!r})"))
    return found


def _fill_placeholders(parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    out = list(words)
    sub = parser
    for i, word in enumerate(out):
        if word in SUBPARSERS and sub is parser:
            sub = SUBPARSERS[word]
            continue
        action = _option(sub, word.split("=")[0]) if word.startswith("-") else None
        if action is None or not _takes_value(action) or i + 1 >= len(out) or not _is_placeholder(out[i + 1]):
            continue
        if action.choices:
            out[i + 1] = str(next(iter(action.choices)))
        elif action.type in (int, float):
            out[i + 1] = "0"
    return out


def command_problems(doc: Readme) -> list[str]:
    problems = []
    for span in doc.spans:
        text = span.text[2:] if span.text.startswith("$ ") else span.text
        words = text.split()
        where = f"README.md:{span.line} `{span.text[:70]}`"
        if words and words[0] == "ostracon" and len(words) > 1:
            problems += check_synopsis(words[1:], where)
        elif len(words) > 1 and words[0] in SUBPARSERS and words[1].startswith("-"):
            problems += check_synopsis(words[1:], where, subcommand=words[0])
    for words, where in code_block_command_lines(doc):
        problems += check_synopsis(words, where)
    return problems


def test_readme_command_lines_use_existing_subcommands_and_flags():
    problems = command_problems(DOC)
    assert not problems, "the README names options or subcommands that do not exist:\n" + "\n".join(problems)


def parse_problems(doc: Readme) -> list[str]:
    problems = []
    for words, where in code_block_command_lines(doc):
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                build_parser().parse_args(_fill_placeholders(PARSER, words))
        except SystemExit as exc:
            if exc.code:
                problems.append(f"{where}: `ostracon {' '.join(words)}`: {stderr.getvalue().strip()}")
    return problems


def test_readme_code_block_command_lines_parse():
    assert any(words == ["demo"] for words, _ in code_block_command_lines(DOC))  # the reader found the quickstart
    problems = parse_problems(DOC)
    assert not problems, "README command lines that `ostracon` refuses:\n" + "\n".join(problems)


def _all_flags() -> set[str]:
    flags = set(PARSER._option_string_actions)
    for sub in SUBPARSERS.values():
        flags |= set(sub._option_string_actions)
    return flags


def bare_flag_problems(doc: Readme) -> list[str]:
    every = _all_flags()
    problems = []
    for span in doc.spans:
        if not span.text.startswith("-"):
            continue
        where = f"README.md:{span.line} `{span.text[:70]}`"
        if span.in_row and span.row_command is not None:
            if span.row_command and span.row_command not in SUBPARSERS:
                continue  # the row's command does not exist: command_problems says so
            parser = SUBPARSERS[span.row_command] if span.row_command else PARSER
            label = f"ostracon {span.row_command}".strip()
            for name in _flag_words(span.text):
                if _option(parser, name) is None:
                    problems.append(f"{where}: in the row of `{label}`, which has no option {name}")
        elif span.section in FLAG_SECTIONS:
            for name in _flag_words(span.text):
                if name not in every:
                    problems.append(f"{where}: no ostracon command has the option {name}")
    return problems


def test_readme_bare_flags_exist():
    problems = bare_flag_problems(DOC)
    assert not problems, "the README names options that do not exist:\n" + "\n".join(problems)


def _flag_words(text: str) -> list[str]:
    """The option names in a bare-flag span: each word starting with '-', split at '/' and '='."""
    out = []
    for word in text.split():
        for part in word.split("/"):
            if part.startswith("-"):
                match = FLAG.match(part)
                if match:
                    out.append(match.group(1))
    return out


# ----- config keys

LEAVES = set(config_reference.leaf_keys())
TABLES = set(config_reference.table_keys())
FREE_TABLES = set(config_reference.free_tables())
KNOWN = LEAVES | TABLES
_KEY = re.compile(
    r"(?<![\w./-])((?:" + "|".join(SECTION_NAMES) + r")(?:\.(?:[A-Za-z_]\w*|<[^<>\s]+>))+)(?![\w(<])"
)


def key_exists(key: str) -> bool:
    parts = key.split(".")
    for i in range(1, len(parts)):  # below a free-form table, anything goes
        if ".".join(parts[:i]) in FREE_TABLES and all(not p.startswith("<") for p in parts[:i]):
            return True
    pattern = r"\.".join(r"[^.]+" if p.startswith("<") else re.escape(p) for p in parts)
    if any(re.fullmatch(pattern, known) for known in KNOWN):
        return True
    # a placeholder may also stand for a key below a free-form table: model.params.<name>
    for table in FREE_TABLES:
        depth = table.count(".") + 1
        if len(parts) > depth and re.fullmatch(r"\.".join(
                r"[^.]+" if p.startswith("<") else re.escape(p) for p in parts[:depth]), table):
            return True
    return False


def readme_config_keys(doc: Readme) -> list[tuple[str, str]]:
    found = []
    for span in doc.spans:
        for match in _KEY.finditer(span.text):
            found.append((match.group(1), f"README.md:{span.line} `{span.text[:70]}`"))
        for match in re.finditer(r"--set[ =]([\w.<>]+)=", span.text):
            found.append((match.group(1), f"README.md:{span.line} `{span.text[:70]}`"))
    for words, where in code_block_command_lines(doc):
        for i, word in enumerate(words):
            value = word[len("--set="):] if word.startswith("--set=") else (
                words[i + 1] if word == "--set" and i + 1 < len(words) else None)
            if value and "=" in value:
                found.append((value.split("=", 1)[0], where))
    return [(key, where) for key, where in found if key.split(".")[0] in SECTION_NAMES]


def config_key_problems(doc: Readme) -> list[str]:
    return [f"{where}: {key}" for key, where in readme_config_keys(doc) if not key_exists(key)]


def test_readme_config_keys_exist():
    assert any(key == "data.split" for key, _ in readme_config_keys(DOC))  # the reader found the prose's keys
    problems = config_key_problems(DOC)
    assert not problems, ("the README names config keys the schema (cluster/config/schema.py) does not have:\n"
                          + "\n".join(problems))


def test_key_matching_rules():
    assert key_exists("unlearning.groups") and key_exists("unlearning") and key_exists("unlearning.<param>")
    assert key_exists("model.params.hidden") and key_exists("model.params.<name>")
    assert key_exists("training.rule_params.c") and key_exists("byzantine.params.tau")
    assert not key_exists("training.rounds_") and not key_exists("unlearning.nope.lr")
    assert not key_exists("training.rounds.x")  # a scalar has no keys below it
    assert _KEY.findall("see bench/unlearning.py, model.eval() and `data.split = 'x'`") == ["data.split"]
    assert _KEY.findall("unlearning.<method>.<param>") == ["unlearning.<method>.<param>"]


# ----- RPCs


def _service():
    from ostracon.v1 import coordinator_pb2

    return coordinator_pb2.DESCRIPTOR, coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"]


def _other_names() -> set[str]:
    import ostracon.cluster
    from ostracon.cluster.service import client

    descriptor, _ = _service()
    names = set(descriptor.message_types_by_name) | set(descriptor.enum_types_by_name)
    names |= set(descriptor.services_by_name)
    names |= set(getattr(ostracon.cluster, "__all__", ()))
    names |= {n for n in dir(client) if not n.startswith("_")}
    return names


CAMEL = r"[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*"


def readme_rpc_mentions(doc: Readme) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(names that must be RPCs, names that must be RPCs or other API names), each with its location."""
    strict, loose = [], []
    texts = [(p.text, p.line, p.section, False) for p in doc.prose]
    texts += [(b.text, b.line, b.section, True) for b in doc.blocks]
    for text, line, section, is_code in texts:
        for match in re.finditer(r"\bCoordinator/(\w+)", text):
            strict.append((match.group(1), f"README.md:{line + text.count(chr(10), 0, match.start())}"))
        for match in re.finditer(r"(\w*)\.(" + CAMEL + r")\(", text):
            if section == GRPC_SECTION or match.group(1).lower().endswith("stub"):
                strict.append((match.group(2), f"README.md:{line + text.count(chr(10), 0, match.start())}"))
        if section == GRPC_SECTION and not is_code:
            prose = re.sub(_SPAN, " ", text)
            for match in re.finditer(r"(?<![\w.])(" + CAMEL + r")\(", prose):
                loose.append((match.group(1), f"README.md:{line + prose.count(chr(10), 0, match.start())}"))
    for span in doc.spans:
        if span.section == GRPC_SECTION:
            match = re.match(r"(" + CAMEL + r")\b(?!/)", span.text)  # Coordinator/Name: checked above
            if match:
                loose.append((match.group(1), f"README.md:{span.line} `{span.text[:60]}`"))
    return strict, loose


def _rpcs() -> set[str]:
    return {method.name for method in _service()[1].methods}


def rpc_problems(doc: Readme) -> list[str]:
    rpcs, others = _rpcs(), _other_names()
    strict, loose = readme_rpc_mentions(doc)
    problems = [f"{where}: {name}" for name, where in strict if name not in rpcs]
    problems += [f"{where}: {name} (neither an RPC nor a message, enum or client name)"
                 for name, where in loose if name not in rpcs and name not in others]
    return problems + signature_problems(doc)


def signature_problems(doc: Readme) -> list[str]:
    """An RPC written with arguments in the gRPC API section, ``Name(RequestType) -> ResponseType``,
    ``Name(field, field)`` or ``Name(Type field)``, names its real request type, fields and response type."""
    methods = {m.name: m for m in _service()[1].methods}
    problems = []
    for span in doc.spans:
        match = re.fullmatch(r"(\w+)\(([^()]*)\)(?:\s*->\s*(\w+))?", span.text)
        if span.section != GRPC_SECTION or not match or match.group(1) not in methods:
            continue
        method, where = methods[match.group(1)], f"README.md:{span.line} `{span.text}`"
        fields = {f.name: f for f in method.input_type.fields}
        for arg in filter(None, (a.strip() for a in match.group(2).split(","))):
            words = arg.split()
            if len(words) == 1 and re.fullmatch(CAMEL, words[0]):
                if words[0] != method.input_type.name:
                    problems.append(f"{where}: {method.name} takes {method.input_type.name}, not {words[0]}")
            elif words[-1] not in fields:
                problems.append(f"{where}: {method.input_type.name} has no field {words[-1]} "
                                f"(it has: {', '.join(fields) or 'none'})")
            elif len(words) == 2 and getattr(fields[words[-1]].message_type, "name", None) != words[0]:
                problems.append(f"{where}: {method.input_type.name}.{words[-1]} is not a {words[0]}")
        if match.group(3) and match.group(3) != method.output_type.name:
            problems.append(f"{where}: {method.name} returns {method.output_type.name}, not {match.group(3)}")
    return problems


def test_readme_rpcs_exist():
    assert _service()[1].full_name == "ostracon.v1.Coordinator"
    strict, loose = readme_rpc_mentions(DOC)
    assert {name for name, _ in strict} >= {"Delete"}  # grpcurl's ostracon.v1.Coordinator/Delete
    assert {name for name, _ in loose} >= {"Delete", "GetOperation", "WatchOperation", "GetClusterStatus"}
    rpcs = _rpcs()
    problems = rpc_problems(DOC)
    assert not problems, (f"the README names RPCs that ostracon.v1.Coordinator does not have "
                          f"(it has: {', '.join(sorted(rpcs))}):\n" + "\n".join(problems))


# ----- the readers themselves


def test_shell_reader():
    assert shell_commands("A=1 B=2 ostracon verify --state-dir run > out.txt 2>&1 | tee log # note") == [
        ["ostracon", "verify", "--state-dir", "run"], ["tee", "log"]]
    assert shell_commands("pip install -e . && ostracon demo") == [["pip", "install", "-e", "."],
                                                                    ["ostracon", "demo"]]


@pytest.mark.parametrize("synopsis, problem", [
    ("unlearn --state-dir DIR --ids 1 --mode fast", "'fast' is not one of"),
    ("verify --state-dir DIR --allow-inexact", "has no option --allow-inexact"),
    ("forget --ids 1", "no such subcommand"),
    ("bench robustness|speed [ARGS…]", "'speed' is not one of"),
    ("--quiet demo", "`ostracon` has no option --quiet"),
])
def test_synopsis_checker_catches(synopsis, problem):
    problems = check_synopsis(synopsis.split(), "x")
    assert problems and problem in problems[0], problems


@pytest.mark.parametrize("synopsis", [
    "serve --state-dir DIR [-c CONFIG] [--port 50051] [--backend local|ray] [--tls-cert F --tls-key F]",
    "bench aggregators --repeats 3 --whatever",
    "[-v] COMMAND",
    "--version",
    "delete --target HOST:PORT --ids ID[,ID…] | --ids-file F [--mode exact|approximate|approximate_then_exact]",
])
def test_synopsis_checker_accepts(synopsis):
    assert check_synopsis(synopsis.split(), "x") == []


BAD_README = """
# t

## Command line

| command | what it does |
|---|---|
| `ostracon demo [-o DIR]` | with `--json` |

Use `ostracon unlearn --mode fast --speed 3`, `verify --allow-inexact` and `--frobnicate`.

```bash
$ OSTRACON_TOKEN=x ostracon serve --state-dir DIR --port PORT --bogus 2>&1 | tee log
ostracon train -c c.toml -o run \\
  --set unlearning.gate.max_nope=0.1  # a comment
ostracon forget --ids 1
```

## Configuration

`unlearning.salun.nope`, `training.nope`, `model.params.<x>`, `training.rule_params.c`, `unlearning.slices`,
`data.source = "npz"`, but not bench/unlearning.py nor `bench/unlearning.py`.

## gRPC API

`GetOperations`, `Coordinator/Forget`, `OperationEvent`, `CoordinatorClient(tls_ca=...)` and Explode(now):
`Delete(DeleteRequest) -> Operation`, `ListOperations(page_size, cursor)`, `Predict(Tensor input)`,
`GetOperation(OperationId) -> Certificate`, `Predict(Operation inputs)`.

```python
stub.Remove(request)
```

## Benchmarks

`--jobs 1`, `-m "not slow"`, and `ostracon bench scale` and `GetOperationz`.
"""


def test_checkers_catch_what_does_not_exist():
    doc = parse_readme(BAD_README)
    commands = "\n".join(command_problems(doc))
    for expected in ("--mode 'fast' is not one of ['approximate', 'approximate_then_exact', 'exact']",
                     "`ostracon unlearn` has no option --speed", "`ostracon verify` has no option --allow-inexact",
                     "`ostracon serve` has no option --bogus",
                     "`ostracon forget`: no such subcommand"):
        assert expected in commands, commands
    assert "README.md:13 ('OSTRACON_TOKEN=x ostracon serve" in commands  # the line each command is on
    assert "README.md:16 ('ostracon forget" in commands
    parse = "\n".join(parse_problems(doc))
    assert "unrecognized arguments: --bogus" in parse and "invalid choice: 'forget'" in parse
    assert "argument --port" not in parse  # the placeholder PORT stood in for an int
    assert len(parse_problems(parse_readme("```bash\nostracon serve --state-dir DIR --port PORT\n```\n"))) == 0
    flags = bare_flag_problems(doc)
    assert len(flags) == 2 and "`ostracon demo`, which has no option --json" in flags[0], flags
    assert "no ostracon command has the option --frobnicate" in flags[1]
    keys = sorted(p.rsplit(": ", 1)[1] for p in config_key_problems(doc))
    assert keys == ["training.nope", "unlearning.gate.max_nope", "unlearning.salun.nope"], keys
    rpcs = rpc_problems(doc)
    signatures = signature_problems(doc)
    assert sorted(p.split(": ", 1)[1].split(" ")[0] for p in rpcs if p not in signatures) == [
        "Explode", "Forget", "GetOperations", "Remove"], rpcs
    assert [p.split("`: ", 1)[1] for p in signatures] == [
        "ListOperationsRequest has no field cursor (it has: page_size, page_token)",
        "PredictRequest has no field input (it has: inputs)",
        "GetOperation takes GetOperationRequest, not OperationId",
        "GetOperation returns Operation, not Certificate",
        "PredictRequest.inputs is not a Operation"], signatures
