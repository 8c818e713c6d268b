"""The spec's validation commands as the README shows them, read back as requests a test can replay."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Accepting a deployment: the spec's own commands"


@dataclass(frozen=True)
class CurlCommand:
    method: str
    url: str
    headers: dict[str, str]
    data: str | None
    repeat: int  # the `for i in {1..N}` loop around it, run concurrently (`&`)


def readme_block() -> str:
    """The first bash block of the README's acceptance section, exactly as written there."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    if match is None:
        raise AssertionError(f"no bash block under {SECTION!r} in README.md")
    return match.group(1)


def curl_commands(block: str) -> list[CurlCommand]:
    joined = block.replace("\\\n", " ")
    commands = []
    repeat = 1
    for line in joined.splitlines():
        line = line.strip()
        loop = re.match(r"for i in \{1\.\.(\d+)\}; do", line)
        if loop:
            repeat = int(loop.group(1))
            continue
        if line == "done":
            repeat = 1
            continue
        if not line.startswith("curl "):
            continue
        words = shlex.split(line.rstrip("&").strip())
        method, url, headers, data = "GET", "", {}, None
        index = 1
        while index < len(words):
            word = words[index]
            if word == "-X":
                method, index = words[index + 1], index + 2
            elif word == "-H":
                name, _, value = words[index + 1].partition(":")
                headers[name.strip()] = value.strip()
                index += 2
            elif word == "-d":
                data, index = words[index + 1], index + 2
            else:
                url, index = word, index + 1
        commands.append(CurlCommand(method, url, headers, data, repeat))
    return commands
