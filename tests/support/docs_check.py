"""Checks that the Markdown docs match the code: links and anchors, `hxp-llm` commands, scripts, config keys.

Each check takes a document's text (and where it lives) and returns problems as one-line strings, so
tests can run it on the real docs and on a planted document alike. Fenced code blocks are code: no
headings or links are read from them, but commands are.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
BARE_MD = re.compile(r"(?<![\w/.-])([\w.-]+\.md)\b")
SCRIPT = re.compile(r"(?<![\w/.-])(scripts/[A-Za-z0-9_-]+(?:\.[A-Za-z0-9]+)?)")
# `hxp-llm` where a shell would run it: start of a line or inline span (after a prompt, variable
# assignments, sudo, a path), or after a shell operator.
COMMAND = re.compile(r"(?:^|[;&|(]\s*)(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:sudo\s+)?(?:[\w./-]*/)?"
                     r"hxp-llm(?=\s|$)(?P<rest>[^;&|)#]*)")
PYTHON_MODULE = re.compile(r"python3?\s+-m\s+([A-Za-z_][\w.]*)")
SHELL_STOP = re.compile(r"\s(?:#|>|2>|\|)")


@dataclass(frozen=True)
class Doc:
    path: Path
    text: str

    def prose_lines(self) -> Iterator[tuple[int, str]]:
        """(line number, line) outside fenced code blocks."""
        in_fence = False
        for number, line in enumerate(self.text.splitlines(), 1):
            if FENCE.match(line):
                in_fence = not in_fence
                continue
            if not in_fence:
                yield number, line

    def code_snippets(self) -> Iterator[tuple[int, str]]:
        """(line number, code): every line of a fenced block, and every inline code span elsewhere."""
        in_fence = False
        for number, line in enumerate(self.text.splitlines(), 1):
            if FENCE.match(line):
                in_fence = not in_fence
                continue
            if in_fence:
                yield number, line
            else:
                for match in INLINE_CODE.finditer(line):
                    yield number, match.group(2).strip()


def load(path: Path) -> Doc:
    return Doc(path, path.read_text(encoding="utf-8"))


# --- links and anchors

def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").replace("\\", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(doc: Doc) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _, line in doc.prose_lines():
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def link_problems(doc: Doc, repo_root: Path) -> list[str]:
    """Every relative link resolves to a file or directory, and every #anchor to a heading in it."""
    problems = []
    for number, line in doc.prose_lines():
        line_without_code = INLINE_CODE.sub("", line)
        for match in LINK.finditer(line_without_code):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            resolved = (doc.path.parent / path_part).resolve() if path_part else doc.path
            where = f"{doc.path.name}:{number}"
            if not resolved.exists():
                problems.append(f"{where}: dead link '{target}': {resolved} does not exist")
                continue
            if anchor and resolved.suffix == ".md" and anchor not in anchors(load(resolved)):
                problems.append(f"{where}: link '{target}': no heading with the anchor '#{anchor}' in "
                                f"{resolved.name}")
        for match in BARE_MD.finditer(LINK.sub("", line)):
            name = match.group(1)
            candidates = [doc.path.parent / name, repo_root / name, repo_root / "docs" / name]
            if not any(c.exists() for c in candidates):
                problems.append(f"{doc.path.name}:{number}: '{name}' is named but exists neither beside "
                                f"{doc.path.name}, nor at the repository root, nor in docs/")
    return problems


def path_problems(doc: Doc, repo_root: Path, top_dirs: Iterable[str]) -> list[str]:
    """Each repository path named (under one of top_dirs; globs allowed) exists."""
    prefixes = "|".join(map(re.escape, top_dirs))
    pattern = re.compile(rf"(?<![\w/.-])((?:{prefixes})/[\w./*@-]*[\w*@])")
    problems = []
    for number, line in enumerate(doc.text.splitlines(), 1):
        for path in pattern.findall(line):
            if not any(repo_root.glob(path)):
                problems.append(f"{doc.path.name}:{number}: {path} does not exist")
    return problems


# --- hxp-llm commands

def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def _is_placeholder(token: str) -> bool:
    return (token[:1] in "[<{." or token.isupper() or "*" in token
            or bool(re.fullmatch(r"[A-Z][A-Z0-9_]*[.,:]?", token)))


def command_problems(doc: Doc, parser: argparse.ArgumentParser) -> list[str]:
    """Each `hxp-llm ...` named: its subcommands exist, its `--options` exist, and `--help` exits 0."""
    problems = []
    for number, code in doc.code_snippets():
        for match in COMMAND.finditer(code):
            tokens = SHELL_STOP.split(" " + match.group("rest"))[0].split()
            if tokens and tokens[0].endswith(":"):  # a message it prints ("hxp-llm serve: refusing ..."), not a command
                continue
            problem = check_command(tokens, parser)
            if problem:
                problems.append(f"{doc.path.name}:{number}: `hxp-llm {' '.join(tokens)}`: {problem}")
    return problems


def check_command(tokens: list[str], parser: argparse.ArgumentParser) -> str | None:
    path: list[str] = []
    current = parser
    rest = tokens
    while rest:
        choices = _subcommands(current)
        token = rest[0]
        if choices is None or token.startswith("-") or _is_placeholder(token):
            break
        if token not in choices:
            return f"no command 'hxp-llm {' '.join([*path, token])}' (known: {', '.join(sorted(choices))})"
        path.append(token)
        current = choices[token]
        rest = rest[1:]
    known = set(current._option_string_actions)
    for token in rest:
        option = token.split("=", 1)[0]
        if option.startswith("--") and option.strip("[].") not in known:
            return f"'hxp-llm {' '.join(path)}' has no option {option.strip('[].')}"
    positionals = [a for a in current._actions if not a.option_strings]
    if rest and not rest[0].startswith(("-", "[-")) and not positionals:
        return f"'hxp-llm {' '.join(path)}' takes no argument like '{rest[0]}'"
    return _help_problem(parser, path)


def _help_problem(parser: argparse.ArgumentParser, path: list[str]) -> str | None:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            parser.parse_args([*path, "--help"])
    except SystemExit as exc:
        if exc.code == 0 and out.getvalue().startswith("usage:"):
            return None
        return f"--help exited {exc.code}: {out.getvalue()[-300:]}"
    return "--help did not exit"


def module_problems(doc: Doc) -> list[str]:
    """Each `python -m MODULE` named can be found (app/ and tools/ are on the path)."""
    problems = []
    for number, code in doc.code_snippets():
        for module in PYTHON_MODULE.findall(code):
            if module in {"pip", "pytest", "venv"}:
                continue
            try:
                found = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                problems.append(f"{doc.path.name}:{number}: `python -m {module}`: no such module")
    return problems


# --- scripts

def scripts_named(docs: Iterable[Doc]) -> dict[str, str]:
    """scripts/NAME -> the first place it is named."""
    named: dict[str, str] = {}
    for doc in docs:
        for number, line in enumerate(doc.text.splitlines(), 1):
            for script in SCRIPT.findall(line):
                named.setdefault(script, f"{doc.path.name}:{number}")
    return named


def script_file_problems(named: dict[str, str], repo_root: Path) -> list[str]:
    """Each script named exists and is executable."""
    problems = []
    for script, where in sorted(named.items()):
        path = repo_root / script
        if not path.is_file():
            problems.append(f"{where}: {script} does not exist")
        elif not os.access(path, os.X_OK):
            problems.append(f"{where}: {script} is not executable")
    return problems


def script_options_named(docs: Iterable[Doc]) -> dict[str, dict[str, str]]:
    """scripts/NAME -> {--option: where} for the options written after it in code."""
    named: dict[str, dict[str, str]] = {}
    for doc in docs:
        for number, code in doc.code_snippets():
            for match in re.finditer(r"(scripts/[A-Za-z0-9_-]+)([^;&|#>]*)", code):
                for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", match.group(2)):
                    named.setdefault(match.group(1), {}).setdefault(option, f"{doc.path.name}:{number}")
    return named


# --- configuration keys

def documented_keys(doc: Doc) -> dict[str, list[tuple[str, int]]]:
    """key -> [(section, line)] from the first cell of each table row under a `## section` heading."""
    keys: dict[str, list[tuple[str, int]]] = {}
    section = ""
    for number, line in doc.prose_lines():
        heading = HEADING.match(line)
        if heading:
            section = heading.group(2).strip().strip("`")
            continue
        if not line.startswith("|") or line.startswith("|---"):
            continue
        first_cell = line.split("|")[1]
        for key in re.findall(r"`([a-z][a-z0-9_]*)`", first_cell):
            keys.setdefault(key, []).append((section, number))
    return keys


def config_key_problems(doc: Doc, section_of_key: dict[str, str]) -> list[str]:
    """Every documented key is in the schema under that section, and every schema key is documented."""
    documented = documented_keys(doc)
    found = []
    for key, places in documented.items():
        for section, number in places:
            if key not in section_of_key:
                found.append((number, f"key '{key}' is not a setting of the schema"))
            elif section_of_key[key] != section:
                found.append((number, f"key '{key}' is documented under '{section}', the schema puts it in "
                                      f"'{section_of_key[key]}'"))
    problems = [f"{doc.path.name}:{number}: {message}" for number, message in sorted(found)]
    for key in sorted(set(section_of_key) - set(documented)):
        problems.append(f"{doc.path.name}: setting '{section_of_key[key]}.{key}' is not documented")
    return problems


def env_name_problems(doc: Doc, keys: Iterable[str], prefix: str, extra: Iterable[str]) -> list[str]:
    """Every `PREFIX<KEY>` variable named is a setting (or one of `extra`)."""
    known = {prefix + key.upper() for key in keys} | set(extra)
    problems = []
    for number, line in enumerate(doc.text.splitlines(), 1):
        for name in re.findall(re.escape(prefix) + r"[A-Z0-9_]+", line):
            if name not in known and not name.endswith("_"):
                problems.append(f"{doc.path.name}:{number}: {name} is not a setting's variable")
    return problems


def _spellings(value: object) -> set[str]:
    """How the tables may write a default: none, true/false, the number, or whole KiB/MiB."""
    if value is None or value == ():
        return {"none"}
    if isinstance(value, bool):
        return {str(value).lower()}
    spellings = {str(value)}
    if isinstance(value, int):
        spellings |= {f"{value // size} {unit}" for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10))
                      if value >= size and value % size == 0}
    return spellings


def default_problems(doc: Doc, defaults: dict[str, object]) -> list[str]:
    """The default column of each key row says what the schema's default is (one value may serve several keys)."""
    problems = []
    for number, line in doc.prose_lines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        keys = [k for k in re.findall(r"`([a-z][a-z0-9_]*)`", cells[0]) if k in defaults]
        written = [re.sub(r"\s*\(.*\)$", "", d.strip()) for d in cells[1].split(",")] if len(cells) > 1 else []
        if not keys or len(written) not in (1, len(keys)):
            continue
        for key, text in zip(keys, written * len(keys) if len(written) == 1 else written, strict=True):
            same_as_other_key = text.startswith("`") and defaults[key] is None  # "`host`": follows that key
            if text not in _spellings(defaults[key]) and not same_as_other_key:
                problems.append(f"{doc.path.name}:{number}: '{key}' is documented with default {text!r}, "
                                f"the schema's is {str(defaults[key])!r}")
    return problems
