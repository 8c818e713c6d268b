"""The PromQL that monitoring/ ships, taken apart just enough to prove each piece against a real Prometheus.

- `shipped_queries()`: every expression of the alert rules, the recording rules and the Grafana dashboard
  (its variables `$model`, `$__rate_interval` filled in), each with what it is.
- `selectors(expr)`: the metric selectors in an expression (`name{matchers}`), functions, keywords and label
  lists skipped: each must match a series, or the expression names a metric or label value that is not there.
- `comparison_operands(expr)`: the two sides of a top-level comparison (`signal > threshold`), numbers left
  out. An alert's expression is empty while all is well, by design; its operands are not.

A small tokenizer, not a PromQL parser: it knows the forms used in monitoring/ and fails loudly on others.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring" / "prometheus" / "rules" / "hxp-llm.yml"
DASHBOARD = REPO / "monitoring" / "grafana" / "dashboards" / "hxp-llm.json"
# What Grafana would put in: $__rate_interval is at least 4 scrape intervals (5 s here); 1m is safe.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "inf", "nan"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class Query:
    source: str  # "alert HxpLlmQueueSaturating", "record hxp_llm:...", "panel 'Tokens per second'"
    kind: str  # alert, record, panel, variable
    expr: str


def _skip_string(expr: str, i: int) -> int:
    quote = expr[i]
    i += 1
    while i < len(expr) and expr[i] != quote:
        i += 2 if expr[i] == "\\" and quote != "`" else 1
    return i + 1


def _matching(expr: str, i: int) -> int:
    """Index after the bracket that closes the one at `i`, strings skipped."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = [pairs[expr[i]]]
    i += 1
    while stack:
        if i >= len(expr):
            raise ValueError(f"unbalanced brackets in {expr!r}")
        ch = expr[i]
        if ch in "\"'`":
            i = _skip_string(expr, i)
            continue
        if ch in pairs:
            stack.append(pairs[ch])
        elif ch == stack[-1]:
            stack.pop()
        elif ch in ")}]":
            raise ValueError(f"unbalanced brackets in {expr!r}")
        i += 1
    return i


def _next_non_space(expr: str, i: int) -> int:
    while i < len(expr) and expr[i].isspace():
        i += 1
    return i


def selectors(expr: str) -> list[str]:
    """Metric selectors (`name` or `name{...}`) in order of appearance, duplicates kept once."""
    found: list[str] = []
    i = 0
    while i < len(expr):
        ch = expr[i]
        if ch in "\"'`":
            i = _skip_string(expr, i)
        elif ch in "{[":  # a selector's matchers were consumed with its name; durations carry no names
            i = _matching(expr, i)
        elif (number := _NUMBER.match(expr, i)) and (ch.isdigit() or ch == "."):
            i = number.end()
            while i < len(expr) and expr[i].isalpha():  # a duration's unit, as in 5m
                i += 1
        elif ident := _IDENT.match(expr, i):
            name, i = ident.group(), ident.end()
            after = _next_non_space(expr, i)
            if name.lower() in LABEL_LIST_KEYWORDS:
                if after < len(expr) and expr[after] == "(":
                    i = _matching(expr, after)
            elif name.lower() in KEYWORDS:
                pass
            elif after < len(expr) and expr[after] == "(":
                pass  # a function or an aggregation
            elif (modifier := _IDENT.match(expr, after)) and modifier.group().lower() in ("by", "without"):
                pass  # an aggregation with its grouping first: sum by (le) (...)
            else:
                selector = name
                if after < len(expr) and expr[after] == "{":
                    end = _matching(expr, after)
                    selector, i = name + expr[after:end], end
                if selector not in found:
                    found.append(selector)
        else:
            i += 1
    return found


def _top_level_comparison(expr: str) -> tuple[int, str] | None:
    i = 0
    while i < len(expr):
        ch = expr[i]
        if ch in "\"'`":
            i = _skip_string(expr, i)
        elif ch in "({[":
            i = _matching(expr, i)
        else:
            for op in COMPARISONS:
                if expr.startswith(op, i):
                    return i, op
            i += 1
    return None


def _strip_modifiers(side: str) -> str:
    """Drop a binary operator's `bool`, `on (..)`, `ignoring (..)`, `group_left (..)` from the right side."""
    side = side.strip()
    while True:
        word = _IDENT.match(side)
        if word is None or word.group().lower() not in {"bool", *LABEL_LIST_KEYWORDS}:
            return side
        side = side[word.end():].lstrip()
        if word.group().lower() != "bool" and side.startswith("("):
            side = side[_matching(side, 0):].lstrip()


def comparison_operands(expr: str) -> list[str]:
    """Both sides of the top-level comparison that are not plain numbers; [expr] when there is none."""
    expr = expr.strip()
    absent = re.fullmatch(r"absent\s*\((.*)\)", expr, re.DOTALL)
    if absent:  # absent(X) is empty exactly when all is well: X itself must have data
        return [absent.group(1).strip()]
    split = _top_level_comparison(expr)
    if split is None:
        return [expr]
    index, op = split
    sides = [expr[:index].strip(), _strip_modifiers(expr[index + len(op):])]
    return [side for side in sides if not _NUMBER.fullmatch(side)]


def fill_grafana_variables(expr: str, model: str) -> str:
    expr = expr.replace("$model", model)  # a regex matcher: the plain name matches itself
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable left in {expr!r}")
    return expr


def rule_queries() -> Iterator[Query]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                yield Query(f"alert {rule['alert']}", "alert", rule["expr"].strip())
            else:
                yield Query(f"record {rule['record']}", "record", rule["expr"].strip())


def dashboard() -> dict:
    document: dict = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def panels() -> Iterator[dict]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def dashboard_queries(model: str | None = None) -> Iterator[Query]:
    """Each target of each panel, and each query variable (as the metric its label_values reads)."""
    for panel in panels():
        for target in panel.get("targets", []):
            expr = target["expr"] if model is None else fill_grafana_variables(target["expr"], model)
            yield Query(f"panel {panel['title']!r} {target['refId']}", "panel", expr)
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
            if match is None:
                raise ValueError(f"variable {variable['name']}: only label_values(metric, label) is understood")
            yield Query(f"variable ${variable['name']} (label {match.group(2)})", "variable", match.group(1))


def shipped_queries(model: str | None = None) -> list[Query]:
    return [*rule_queries(), *dashboard_queries(model)]


def metric_name(selector: str) -> str:
    return selector.split("{", 1)[0]
