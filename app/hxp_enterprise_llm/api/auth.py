"""API keys: `api_key` and the lines of `api_keys_file`, any of which opens the API routes.

Each key comes with its policy (name, limits, priority: api/keys_file.py); `check` answers with it.

The file is re-read on SIGHUP and whenever it changes (checked at most once a second), so a key
rotates without a restart: add the new key, move clients over, remove the old one. Comparison is
constant-time against every key, so the time taken does not tell how close a guess was. Keys are
never logged; only their count is.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from hxp_enterprise_llm.api.keys_file import KeysFileError, decode_keys, parse_keys
from hxp_enterprise_llm.orchestration.key_policy import API_KEY_NAME, OPEN_ACCESS, KeyPolicy
from hxp_enterprise_llm.schemas.errors import AuthenticationError

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0


class ApiKeyFileError(ValueError):
    """The keys file cannot be read at start."""


class ApiKeys:
    def __init__(self, key: SecretStr | None, keys_file: Path | None) -> None:
        self._single = key.get_secret_value().encode() if key is not None else None
        self._file = keys_file
        self._from_file: dict[bytes, KeyPolicy] = {}
        self._file_stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self.listeners: list[Callable[[list[KeyPolicy]], object]] = []  # told the policies after each reload
        if keys_file is not None:
            try:
                self._from_file, self._file_stamp = self._read()
            except OSError as exc:
                raise ApiKeyFileError(f"api_keys_file {keys_file}: cannot read: {exc.strerror or exc}") from None
            except KeysFileError as exc:
                raise ApiKeyFileError(f"api_keys_file {exc}") from None
            logger.info("API keys: %d from %s%s", len(self._from_file), keys_file,
                        " plus api_key" if self._single else "")

    @property
    def required(self) -> bool:
        return self._single is not None or self._file is not None

    @property
    def policies(self) -> list[KeyPolicy]:
        """One policy per name, as the file (and `api_key`) give them now."""
        by_name = {policy.name: policy for policy in self._from_file.values()}
        if self._single is not None:
            by_name.setdefault(API_KEY_NAME, KeyPolicy(API_KEY_NAME))
        return list(by_name.values()) if self.required else [OPEN_ACCESS]

    def _read(self) -> tuple[dict[bytes, KeyPolicy], tuple[float, int]]:
        assert self._file is not None
        stat = self._file.stat()
        source = str(self._file)
        return parse_keys(decode_keys(self._file.read_bytes(), source), source), (stat.st_mtime, stat.st_size)

    def reload(self) -> None:
        """Re-read the file; on error keep the keys in use (a broken edit must not lock everyone out)."""
        if self._file is None:
            return
        try:
            self._from_file, self._file_stamp = self._read()
        except OSError as exc:
            logger.error("api_keys_file %s: cannot read (%s); keeping the %d keys in use",
                         self._file, exc.strerror or exc, len(self._from_file))
            return
        except KeysFileError as exc:
            self._file_stamp = self._stamp_now()  # said once: not again every second until the file changes
            logger.error("api_keys_file %s; keeping the %d keys in use", exc, len(self._from_file))
            return
        logger.info("API keys reloaded: %d from %s", len(self._from_file), self._file)
        for listener in self.listeners:
            listener(self.policies)

    def _stamp_now(self) -> tuple[float, int] | None:
        assert self._file is not None
        try:
            stat = self._file.stat()
        except OSError:
            return self._file_stamp
        return stat.st_mtime, stat.st_size

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if self._file is None or now - self._checked < RECHECK_SECONDS:
            return
        self._checked = now
        try:
            stat = self._file.stat()
        except OSError:
            return  # reload() says why when it is asked to
        if (stat.st_mtime, stat.st_size) != self._file_stamp:
            self.reload()

    def check(self, authorization: str) -> KeyPolicy:
        """The key's policy, or raise a 401 in the OpenAI shape."""
        if not self.required:
            return OPEN_ACCESS
        self._reload_if_changed()
        scheme, _, token = authorization.partition(" ")
        offered = token.strip().encode()
        candidates = list(self._from_file.items())
        if self._single is not None:
            candidates.append((self._single, KeyPolicy(API_KEY_NAME)))
        matched: KeyPolicy | None = None
        for key, policy in candidates:  # no early exit: every key is compared, whatever matches
            if hmac.compare_digest(offered, key):
                matched = policy
        if scheme.lower() != "bearer" or matched is None:
            raise AuthenticationError("Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.")
        return matched
