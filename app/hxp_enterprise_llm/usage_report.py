"""`hxp-llm usage`: the usage log summarised per key name and day (UTC), rotated files included.

    hxp-llm usage --config config/demo-cpu.yaml          # the usage_log_file the config names
    hxp-llm usage /var/log/hxp-llm/usage.jsonl --json    # or a file given; --json for machines

Billed tokens are `charged_tokens` (prompt + completion of requests the engine ran); refused requests
are counted but cost nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class DayUsage:
    requests: int = 0
    ok: int = 0
    refused: int = 0  # limited by the key's quota, or refused by the service
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    charged_tokens: int = 0

    def add(self, entry: dict[str, Any]) -> None:
        self.requests += 1
        self.ok += entry.get("outcome") == "ok"
        self.refused += entry.get("outcome") in ("limited", "rejected")
        for name in TOKEN_FIELDS:
            setattr(self, name, getattr(self, name) + int(entry.get(name) or 0))


def log_files(path: Path) -> list[Path]:
    """The log and its rotated predecessors, oldest first (usage.jsonl.3, .2, .1, then usage.jsonl)."""
    rotated = [p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()]
    rotated.sort(key=lambda p: int(p.suffix[1:]), reverse=True)
    return [*rotated, *([path] if path.exists() else [])]


TOKEN_FIELDS = ("prompt_tokens", "cached_tokens", "completion_tokens", "charged_tokens")


def entries(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """The log's entries; a line that is not one (not UTF-8, not a JSON object, a count that is not a whole
    number) is named on stderr and skipped: a damaged line must not hide the rest of the bill."""
    for path in paths:
        with path.open("rb") as lines:
            for number, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue
                try:
                    entry = json.loads(raw.decode("utf-8"))
                except ValueError:  # UnicodeDecodeError is one too
                    entry = None
                if not isinstance(entry, dict) or not all(
                        isinstance(entry.get(name) or 0, int) for name in TOKEN_FIELDS):
                    print(f"hxp-llm usage: {path}:{number}: not a usage entry, skipped", file=sys.stderr)
                    continue
                yield entry


def summarise(items: Iterable[dict[str, Any]]) -> dict[tuple[str, str], DayUsage]:
    table: dict[tuple[str, str], DayUsage] = defaultdict(DayUsage)
    for entry in items:
        table[(str(entry.get("ts", ""))[:10], str(entry.get("key", "?")))].add(entry)
    return dict(sorted(table.items()))


def render(table: dict[tuple[str, str], DayUsage]) -> str:
    columns = list(DayUsage.__dataclass_fields__)
    rows = [["day", "key", *columns]] + [[day, key, *(str(v) for v in asdict(usage).values())]
                                         for (day, key), usage in table.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths, strict=True))) for row in rows)


def cmd_usage(args: argparse.Namespace) -> int:
    path = args.file
    if path is None:
        path = args.load_config(args).config.usage_log_file
        if path is None:
            print("hxp-llm usage: no usage_log_file in the configuration; name the file", file=sys.stderr)
            return 2
    files = log_files(path)
    if not files:
        print(f"hxp-llm usage: {path}: no such file", file=sys.stderr)
        return 2
    try:
        table = summarise(entries(files))
    except OSError as exc:  # a directory named as the log, a file that cannot be read
        print(f"hxp-llm usage: {exc.filename or path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"day": day, "key": key, **asdict(usage)} for (day, key), usage in table.items()]))
    else:
        print(render(table))
    return 0


def add_usage_command(commands: Any, add_config_flags: Callable[[Any], None],
                      load_config: Callable[[argparse.Namespace], Any]) -> None:
    usage = commands.add_parser("usage", help="summarise the usage log per key and day",
                                description=__doc__.split("\n")[0])
    usage.add_argument("file", type=Path, nargs="?", help="the usage log (default: usage_log_file of the config)")
    usage.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    add_config_flags(usage)
    usage.set_defaults(func=cmd_usage, load_config=load_config)
