"""`models.lock`: per model its repo id, pinned revision and every file's path, size and sha256.

TOML, one `[[model]]` table per model and one `[[model.file]]` per file, sorted by path so that a
re-lock produces a small diff. A file whose sha256 is empty is "unlocked": known to belong to the
revision but not yet hashed from the Hub's metadata (`hxp-llm model lock`). A file whose size is not
known for certain omits the `size` key (TOML has no null); it is then checked by its hash only.

Host-built files. A model built on this machine by a recipe whose output depends on the host's
floating-point kernels (the quantized demo variants: GPTQ and SmoothQuant reduce in float, and the
bytes differ between CPUs) lists those files in `host_built`. For them models.lock holds the
reference build's sha256 (the machine that wrote the lock) and the recipe in `revision` pins what
decides the build; each machine records its own first build in `models.host.lock`, beside the model
directories (the models root), and a host-built file is checked against that record when it names
the same revision. Every other file is checked against models.lock as always (docs/models.md).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

LOCK_FORMAT_VERSION = 1
# This machine's own builds of host-built files, in the models root (lockfile format, same version).
HOST_LOCK_NAME = "models.host.lock"

LOCK_HEADER = """\
# models.lock: the exact model files this service may load. Format version 1 (TOML).
# One [[model]] per model: name (directory under the models root), repo_id, revision (40-hex commit
# on the Hugging Face Hub, or "built:<recipe>" for models built here by `scripts/fetch-demo-models`),
# then one [[model.file]] per file: path, size (bytes; omitted = not known yet), sha256 ("" = unlocked).
# host_built: files whose bytes depend on the building CPU; their sha256 here is the reference build's,
# and each machine checks them against its own first build, recorded in models.host.lock (docs/models.md).
# `hxp-llm model verify` and every `hxp-llm serve` start check the model directory against it;
# `hxp-llm model lock NAME --revision R` fills hashes from the Hub's metadata; never edit by hand.
"""


class LockError(ValueError):
    """models.lock is missing, malformed, or has no entry for the model asked for."""


@dataclass(frozen=True)
class LockedFile:
    path: str
    size: int | None  # None: not known for certain yet (the key is omitted in the file)
    sha256: str = ""

    @property
    def locked(self) -> bool:
        return bool(self.sha256)


@dataclass(frozen=True)
class LockEntry:
    name: str
    repo_id: str
    revision: str
    files: tuple[LockedFile, ...] = ()
    note: str = ""
    # Paths whose bytes depend on the building host's float kernels (see the module docstring).
    host_built: tuple[str, ...] = ()

    @property
    def unlocked_files(self) -> list[str]:
        return [f.path for f in self.files if not f.locked]

    def file(self, path: str) -> LockedFile | None:
        return next((f for f in self.files if f.path == path), None)

    def matches(self, name_or_repo_id: str) -> bool:
        return name_or_repo_id in (self.name, self.repo_id)

    def sha256sum_lines(self) -> str:
        """The entry as a `sha256sum -c` list (locked files only), paths relative to the model dir."""
        return "".join(f"{f.sha256}  {f.path}\n" for f in self.files if f.locked)


@dataclass
class ModelsLock:
    models: list[LockEntry] = field(default_factory=list)

    def find(self, name_or_repo_id: str) -> LockEntry:
        for entry in self.models:
            if entry.matches(name_or_repo_id):
                return entry
        known = ", ".join(e.name for e in self.models) or "none"
        raise LockError(f"models.lock has no entry for '{name_or_repo_id}' (entries: {known})")

    def upsert(self, entry: LockEntry) -> None:
        """Replace the entry with the same name, or add it; entries stay sorted by name."""
        self.models = sorted([e for e in self.models if e.name != entry.name] + [entry],
                             key=lambda e: e.name)


def read_lock(path: Path) -> ModelsLock:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LockError(f"lock file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise LockError(f"lock file {path} is not valid TOML: {exc}") from None
    if document.get("version") != LOCK_FORMAT_VERSION:
        raise LockError(f"lock file {path}: unsupported version {document.get('version')!r}, "
                        f"expected {LOCK_FORMAT_VERSION}")
    models = []
    for raw in document.get("model", []):
        try:
            files = tuple(LockedFile(path=str(f["path"]),
                                     size=int(f["size"]) if "size" in f else None,
                                     sha256=str(f.get("sha256", "")))
                          for f in raw.get("file", []))
            models.append(LockEntry(name=raw["name"], repo_id=raw["repo_id"], revision=raw["revision"],
                                    files=tuple(sorted(files, key=lambda f: f.path)),
                                    note=raw.get("note", ""),
                                    host_built=tuple(sorted(str(p) for p in raw.get("host_built", [])))))
        except (KeyError, TypeError, ValueError) as exc:
            name = raw.get("name", "?")
            raise LockError(f"lock file {path}: malformed model entry {name!r}: {exc}") from None
    return ModelsLock(models)


def _toml_str(value: str) -> str:
    # JSON string escaping is a subset of TOML basic-string escaping.
    return json.dumps(value, ensure_ascii=False)


def render_lock(lock: ModelsLock) -> str:
    out = [LOCK_HEADER, f"version = {LOCK_FORMAT_VERSION}\n"]
    for entry in sorted(lock.models, key=lambda e: e.name):
        out.append("\n[[model]]\n")
        out.append(f"name = {_toml_str(entry.name)}\n")
        out.append(f"repo_id = {_toml_str(entry.repo_id)}\n")
        out.append(f"revision = {_toml_str(entry.revision)}\n")
        if entry.note:
            out.append(f"note = {_toml_str(entry.note)}\n")
        if entry.host_built:
            out.append(f"host_built = [{', '.join(_toml_str(p) for p in entry.host_built)}]\n")
        for f in sorted(entry.files, key=lambda f: f.path):
            size = f"size = {f.size}\n" if f.size is not None else ""
            out.append(f"\n[[model.file]]\npath = {_toml_str(f.path)}\n{size}"
                       f"sha256 = {_toml_str(f.sha256)}\n")
    return "".join(out)


def write_lock(lock: ModelsLock, path: Path) -> None:
    """Write atomically, so an interrupted lock never leaves a half file behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_lock(lock), encoding="utf-8")
    tmp.replace(path)


def with_files(entry: LockEntry, files: list[LockedFile]) -> LockEntry:
    return replace(entry, files=tuple(sorted(files, key=lambda f: f.path)))


def with_host_builds(entry: LockEntry, host_lock: ModelsLock | None) -> LockEntry:
    """The entry as this machine verifies it: host-built files as recorded by its own first build.

    Only a host record of the same revision (the same recipe) counts; without one, a host-built file
    must equal the reference build's bytes, so a model copied from another machine is still refused.
    """
    if not entry.host_built or host_lock is None:
        return entry
    record = next((e for e in host_lock.models if e.name == entry.name and e.revision == entry.revision), None)
    if record is None:
        return entry
    own = {f.path: f for f in record.files if f.path in entry.host_built}
    return replace(entry, files=tuple(own.get(f.path, f) for f in entry.files))


def read_host_lock(models_root: Path) -> ModelsLock | None:
    """models.host.lock in the models root, or None when this machine built nothing there."""
    path = models_root / HOST_LOCK_NAME
    return read_lock(path) if path.is_file() else None
