"""Where vLLM and torch keep compiled graphs: the image's cache volume, or a temporary place if it is not writable.

The image points VLLM_CACHE_ROOT and TORCHINDUCTOR_CACHE_DIR at /var/cache/hxp-llm, a volume in
compose, the quadlet and Kubernetes. Run with a read-only root and no volume there, vLLM would fail
to create its cache directory and the engine would not start; a cache is worth keeping, not worth
refusing to serve for.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_VARIABLES = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR")


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def ensure_writable_compile_caches(environ: MutableMapping[str, str] = os.environ) -> None:
    """Move each cache that cannot be written to a temporary directory, saying so once."""
    for name in CACHE_VARIABLES:
        configured = environ.get(name)
        if configured and not _writable(Path(configured)):
            fallback = Path(tempfile.gettempdir()) / "hxp-llm-cache" / name.lower()
            fallback.mkdir(parents=True, exist_ok=True)
            environ[name] = str(fallback)
            log.warning("%s=%s is not writable (read-only root without the cache volume?); compiled graphs go to "
                        "%s and are lost at restart", name, configured, fallback)
