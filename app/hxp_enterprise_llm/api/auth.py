"""API keys: `api_key` and the lines of `api_keys_file`, any of which opens the API routes.

The file is re-read on SIGHUP and whenever it changes (checked at most once a second), so a key
rotates without a restart: add the new key, move clients over, remove the old one. Comparison is
constant-time against every key, so the time taken does not tell how close a guess was. Keys are
never logged; only their count is.
"""

from __future__ import annotations

import hmac
import logging
import time
from pathlib import Path

from pydantic import SecretStr

from hxp_enterprise_llm.schemas.errors import AuthenticationError

logger = logging.getLogger(__name__)

RECHECK_SECONDS = 1.0


class ApiKeyFileError(ValueError):
    """The keys file cannot be read at start."""


class ApiKeys:
    def __init__(self, key: SecretStr | None, keys_file: Path | None) -> None:
        self._single = key.get_secret_value().encode() if key is not None else None
        self._file = keys_file
        self._from_file: tuple[bytes, ...] = ()
        self._file_stamp: tuple[float, int] | None = None
        self._checked = 0.0
        if keys_file is not None:
            try:
                self._from_file, self._file_stamp = self._read()
            except OSError as exc:
                raise ApiKeyFileError(f"api_keys_file {keys_file}: cannot read: {exc.strerror or exc}") from None
            logger.info("API keys: %d from %s%s", len(self._from_file), keys_file,
                        " plus api_key" if self._single else "")

    @property
    def required(self) -> bool:
        return self._single is not None or self._file is not None

    def _read(self) -> tuple[tuple[bytes, ...], tuple[float, int]]:
        assert self._file is not None
        stat = self._file.stat()
        lines = self._file.read_text(encoding="utf-8").splitlines()
        keys = tuple(line.strip().encode() for line in lines if line.strip() and not line.lstrip().startswith("#"))
        return keys, (stat.st_mtime, stat.st_size)

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
        logger.info("API keys reloaded: %d from %s", len(self._from_file), self._file)

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

    def check(self, authorization: str) -> None:
        """Pass, or raise a 401 in the OpenAI shape."""
        if not self.required:
            return
        self._reload_if_changed()
        scheme, _, token = authorization.partition(" ")
        offered = token.strip().encode()
        candidates = ((self._single,) if self._single is not None else ()) + self._from_file
        matched = False
        for key in candidates:  # no early exit: every key is compared, whatever matches
            matched |= hmac.compare_digest(offered, key)
        if scheme.lower() != "bearer" or not matched:
            raise AuthenticationError("Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.")
