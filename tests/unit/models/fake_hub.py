"""A local HTTP server speaking the part of the Hugging Face Hub API that huggingface_hub 2.x calls.

Endpoints (as read in huggingface_hub's hf_api.py and file_download.py; a repo made with
`FakeRepo.from_recording` answers the first two with the recorded JSON, verbatim):
  GET  /api/models/{repo}/revision/{rev}     repo_info: {"id", "sha"}           (branch -> commit)
  GET  /api/models/{repo}/tree/{rev}         list_repo_tree: [{"type", "path", "size", "oid", "lfs"}]
  HEAD /{repo}/resolve/{rev}/{path}          metadata: X-Repo-Commit, ETag, Content-Length
  GET  /{repo}/resolve/{rev}/{path}          bytes; honours "Range: bytes=N-" with 206
Errors carry X-Error-Code like the Hub's (RepoNotFound, RevisionNotFound, EntryNotFound).

Fault injection for tests: `cut_once` paths send part of their body then drop the connection
(first GET only); `serve_instead` serves other bytes than the ones the metadata describes;
`fail_get` paths answer 500. Every request is recorded in `requests`.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    commit: str
    files: dict[str, bytes]
    lfs: set[str] = field(default_factory=set)
    branches: dict[str, str] = field(default_factory=dict)
    recorded: dict[str, Any] | None = None  # {"revision": repo_info's answer, "tree": list_repo_tree's}

    @classmethod
    def from_recording(cls, path: Path, files: dict[str, bytes]) -> FakeRepo:
        """Metadata from a JSON recording of the Hub's answers; `files` are the bytes to serve."""
        recorded = json.loads(path.read_text(encoding="utf-8"))
        info = recorded["revision"]
        return cls(repo_id=info["id"], commit=info["sha"], files=files, branches={"main": info["sha"]},
                   lfs={e["path"] for e in recorded["tree"] if "lfs" in e}, recorded=recorded)

    def info(self) -> dict[str, object]:
        return self.recorded["revision"] if self.recorded else {"id": self.repo_id, "sha": self.commit}

    def tree(self) -> list[dict[str, object]]:
        if self.recorded:
            return list(self.recorded["tree"])
        entries: list[dict[str, object]] = []
        for path, data in sorted(self.files.items()):
            entry: dict[str, object] = {"type": "file", "path": path, "size": len(data)}
            if path in self.lfs:
                sha = hashlib.sha256(data).hexdigest()
                # For an LFS file the git blob is the pointer file, not the content.
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
                entry["oid"] = git_blob_id(pointer.encode())
                entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": len(pointer)}
            else:
                entry["oid"] = git_blob_id(data)
            entries.append(entry)
        return entries

    def etag(self, path: str) -> str:
        if self.recorded:  # the Hub's ETag: the LFS sha256, else the git blob id
            entry = next(e for e in self.recorded["tree"] if e["path"] == path)
            return str(entry["lfs"]["oid"] if "lfs" in entry else entry["oid"])
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if path in self.lfs else git_blob_id(data)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


class FakeHub:
    def __init__(self, repo: FakeRepo) -> None:
        self.repo = repo
        self.requests: list[RecordedRequest] = []
        self.cut_once: dict[str, int] = {}  # path -> bytes sent before the connection drops
        self.serve_instead: dict[str, bytes] = {}
        self.fail_get: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def gets(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + path)
                and "/resolve/" in r.path]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
                pass

            def do_HEAD(self) -> None:
                self._dispatch(head=True)

            def do_GET(self) -> None:
                self._dispatch(head=False)

            def _dispatch(self, *, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                with hub._lock:
                    hub.requests.append(RecordedRequest(self.command, path, dict(self.headers.items())))
                repo = hub.repo
                api = re.fullmatch(r"/api/models/(.+?)/(revision|tree)/([^/]+)(/.*)?", path)
                if api:
                    repo_id, kind, rev = api.group(1), api.group(2), api.group(3)
                    if repo_id != repo.repo_id:
                        return self._error(404, "RepoNotFound", "Repository not found")
                    commit = self._commit(rev)
                    if commit is None:
                        return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                    body = repo.info() if kind == "revision" else repo.tree()
                    return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"},
                                      head=head)
                resolve = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", path)
                if not resolve:
                    return self._error(404, "RepoNotFound", "not found")
                repo_id, rev, file_path = resolve.groups()
                if repo_id != repo.repo_id:
                    return self._error(404, "RepoNotFound", "Repository not found")
                commit = self._commit(rev)
                if commit is None:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                if file_path not in repo.files:
                    return self._error(404, "EntryNotFound", f"{file_path} does not exist", commit=commit)
                if not head and file_path in hub.fail_get:
                    return self._error(500, None, "internal error", commit=commit)
                data = hub.serve_instead.get(file_path, repo.files[file_path])
                headers = {"X-Repo-Commit": commit, "ETag": f'"{repo.etag(file_path)}"',
                           "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
                if head:
                    return self._send(200, data, headers, head=True)
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                cut_at = hub.cut_once.pop(file_path, None)
                return self._send(206 if match else 200, data[start:], headers, cut_after=cut_at)

            def _commit(self, rev: str) -> str | None:
                repo = hub.repo
                return repo.commit if rev == repo.commit else repo.branches.get(rev)

            def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
                headers = {"Content-Type": "application/json", "X-Error-Message": message}
                if code:
                    headers["X-Error-Code"] = code
                if commit:
                    headers["X-Repo-Commit"] = commit
                self._send(status, json.dumps({"error": message}).encode(), headers, head=self.command == "HEAD")

            def _send(self, status: int, body: bytes, headers: dict[str, str], *, head: bool = False,
                      cut_after: int | None = None) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    return
                if cut_after is None:
                    self.wfile.write(body)
                    return
                # An interrupted transfer: part of the body, then the connection goes away.
                self.wfile.write(body[:cut_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        return Handler
