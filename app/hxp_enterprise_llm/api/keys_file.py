"""The keys file: one key per line, optionally followed by the key's name and limits.

    # team, limits (all optional)
    sk-alpha-1  name=alpha requests_per_minute=600 tokens_per_minute=200000 concurrent_requests=8
    sk-batch-7  name=nightly priority=batch tokens_per_minute=1000000
    sk-legacy                                   # a bare key: name "unnamed", no limits

Limits belong to the name, so two keys of one team (a rotation) share them; the lines of one name
must then agree. An unknown attribute, a bad value, a repeated key or disagreeing lines are refused
with the line number: the whole file is refused, never half of it.
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

from hxp_enterprise_llm.orchestration.key_policy import RESERVED_NAMES, KeyPolicy, Priority

UNNAMED = "unnamed"  # keys of the one-key-per-line format
COMMENT = re.compile(r"\s#")  # a comment after a key needs a space before it: '#' may be part of a key
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
LIMITS = ("requests_per_minute", "tokens_per_minute", "concurrent_requests")
ATTRIBUTES = ("name", *LIMITS, "priority")
assert set(ATTRIBUTES) == {f.name for f in fields(KeyPolicy)}  # one place for the attributes: KeyPolicy


class KeysFileError(ValueError):
    """The keys file is malformed; the message names the line."""


def decode_keys(raw: bytes, source: str) -> str:
    """The file's text, or a KeysFileError naming the line that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise KeysFileError(f"{source}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8") \
            from None


def parse_keys(text: str, source: str) -> dict[bytes, KeyPolicy]:
    keys: dict[bytes, KeyPolicy] = {}
    by_name: dict[str, tuple[KeyPolicy, int]] = {}
    # Without the byte-order mark some editors write, else the first key silently begins with it: a 401.
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        words = [] if line.lstrip().startswith("#") else COMMENT.split(line, maxsplit=1)[0].split()
        if not words:
            continue
        key, policy = words[0], _policy(words[1:], f"{source}:{number}")
        if "=" in key:
            raise KeysFileError(f"{source}:{number}: the line must start with the key, not '{key.split('=')[0]}='")
        if key.encode() in keys:
            raise KeysFileError(f"{source}:{number}: this key is on an earlier line already")
        earlier = by_name.setdefault(policy.name, (policy, number))
        if earlier[0] != policy:
            raise KeysFileError(f"{source}:{number}: name '{policy.name}' has other limits on line {earlier[1]}; "
                                "the keys of one name share its limits, so their lines must agree")
        keys[key.encode()] = policy
    return keys


def _policy(words: list[str], where: str) -> KeyPolicy:
    values: dict[str, Any] = {}
    for word in words:
        attribute, equals, value = word.partition("=")
        if attribute not in ATTRIBUTES or not equals:
            raise KeysFileError(f"{where}: unknown attribute '{word}' (allowed: "
                                f"{', '.join(a + '=' for a in ATTRIBUTES)})")
        if attribute in values:
            raise KeysFileError(f"{where}: {attribute} is given twice")
        values[attribute] = _value(attribute, value, where)
    values.setdefault("name", UNNAMED)
    return KeyPolicy(**values)


def _value(attribute: str, value: str, where: str) -> Any:
    if attribute == "name":
        if not NAME_PATTERN.fullmatch(value) or value in RESERVED_NAMES:
            raise KeysFileError(f"{where}: name '{value}' must be 1-64 letters, digits, '_', '.', '-' (and not "
                                f"{' or '.join(repr(name) for name in RESERVED_NAMES)}): it becomes a metrics label")
        return value
    if attribute == "priority":
        try:
            return Priority(value)
        except ValueError:
            raise KeysFileError(f"{where}: priority '{value}' is not one of "
                                f"{', '.join(p.value for p in Priority)}") from None
    # ASCII digits: str.isdigit() also passes a superscript two, which int() refuses.
    if not (value.isascii() and value.isdigit() and len(value) <= 12) or int(value) < 1:
        raise KeysFileError(f"{where}: {attribute} must be a whole number >= 1, got '{value}'")
    return int(value)
