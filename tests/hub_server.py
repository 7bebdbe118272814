"""A tiny in-memory Hugging Face Hub for tests: the HTTP endpoints `huggingface_hub` calls to push and pull a model.

    create_repo        POST /api/repos/create
    README validation  POST /api/validate-yaml
    upload modes       POST /api/{type}s/{ns}/{name}/preupload/{revision}   (every file: "regular", never LFS/xet)
    commit             POST /api/{type}s/{ns}/{name}/commit/{revision}      (NDJSON: header + base64 "file" lines)
    repo info          GET  /api/{type}s/{ns}/{name}[/revision/{revision}]
    download           GET/HEAD /[{type}s/]{ns}/{name}/resolve/{revision}/{path}

Point a client at it with HF_ENDPOINT=server.url (read by huggingface_hub at import time, so set it in the
environment of a subprocess). Writes need `Authorization: Bearer <server.token>`; reads are public.
Every request is logged in `server.requests` as (method, path); requests it does not implement are answered
404 and listed in `server.unhandled`, so a test can assert the client used nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")
USER = "test-user"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a regular (non-LFS) file, which is also its ETag on the Hub."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """One repository: branches point at commits, each commit is a full snapshot {path: bytes}."""

    repo_id: str
    repo_type: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.commit({}, "initial commit", "main")

    def commit(self, files: dict[str, bytes], summary: str, branch: str) -> str:
        """Store a snapshot on `branch` and return its 40-hex commit id."""
        parent = self.branches.get(branch, "")
        sha = hashlib.sha1(f"{self.repo_id}\0{parent}\0{summary}\0{time.time_ns()}".encode()).hexdigest()
        self.commits[sha] = files
        self.branches[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        """Commit id of a branch name or a (full) commit id."""
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class _Handler(BaseHTTPRequestHandler):
    server: HubServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    # -- plumbing ------------------------------------------------------------------------------------------------

    def log_message(self, format: str, *args) -> None:  # keep pytest output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj: dict, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), headers, head)

    def _error(self, status: int, message: str, code: str | None = None, head: bool = False, **headers: str) -> None:
        hdr = {"X-Error-Message": message, **headers}
        if code:
            hdr["X-Error-Code"] = code
        self._json(status, {"error": message}, hdr, head)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization", "") == f"Bearer {self.server.token}":
            return True
        self._error(401, "Invalid credentials in Authorization header")
        return False

    def _repo(self, repo_type: str, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.server.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, "Repository not found", "RepoNotFound", head=head)
        return repo

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        with self.server.lock:
            self.server.requests.append((method, path))
        parts = [unquote(p) for p in path.strip("/").split("/")]
        body = self._body() if method == "POST" else b""
        with self.server.lock:  # one request at a time touches the repos
            handled = self._route(method, parts, body)
        if not handled:
            with self.server.lock:
                self.server.unhandled.append((method, path))
            self._error(404, f"test hub server does not implement {method} {path}", head=method == "HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- routes --------------------------------------------------------------------------------------------------

    def _route(self, method: str, parts: list[str], body: bytes) -> bool:
        if parts[:1] == ["api"]:
            if method == "POST" and parts[1:] == ["repos", "create"]:
                return self._create_repo(json.loads(body or b"{}"))
            if method == "POST" and parts[1:] == ["validate-yaml"]:
                self._json(200, {"errors": [], "warnings": []})
                return True
            if len(parts) >= 4 and parts[1].endswith("s") and parts[1][:-1] in REPO_TYPES:
                repo_type, repo_id, rest = parts[1][:-1], f"{parts[2]}/{parts[3]}", parts[4:]
                if method == "POST" and len(rest) >= 2 and rest[0] == "preupload":
                    return self._preupload(repo_type, repo_id, "/".join(rest[1:]), json.loads(body or b"{}"))
                if method == "POST" and len(rest) >= 2 and rest[0] == "commit":
                    return self._commit(repo_type, repo_id, "/".join(rest[1:]), body)
                if method == "GET" and (not rest or (rest[0] == "revision" and len(rest) >= 2)):
                    return self._repo_info(repo_type, repo_id, "/".join(rest[1:]) or "main")
            return False
        # /{ns}/{name}/resolve/{revision}/{path...} (models) or /{type}s/{ns}/{name}/resolve/... (others)
        repo_type = "model"
        if parts and parts[0].endswith("s") and parts[0][:-1] in REPO_TYPES[1:]:
            repo_type, parts = parts[0][:-1], parts[1:]
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), method == "HEAD")
        return False

    def _create_repo(self, payload: dict) -> bool:
        if not self._authorized():
            return True
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.server.url}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.server.repos:
            self._json(409, {"error": "You already created this repo", "url": url}, {"X-Error-Message": "exists"})
            return True
        self.server.repos[(repo_type, repo_id)] = Repo(repo_id, repo_type)
        self._json(200, {"url": url, "name": repo_id})
        return True

    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict) -> bool:
        if not self._authorized() or (repo := self._repo(repo_type, repo_id)) is None:
            return True
        sha = repo.resolve(revision)
        current = repo.commits[sha] if sha else {}
        files = [
            {
                "path": f["path"],
                "uploadMode": "regular",  # content travels base64 inside the commit: no LFS, no xet
                "shouldIgnore": False,
                "oid": git_blob_sha1(current[f["path"]]) if f["path"] in current else None,
            }
            for f in payload.get("files", [])
        ]
        self._json(200, {"files": files, "commitOid": sha})
        return True

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> bool:
        if not self._authorized() or (repo := self._repo(repo_type, repo_id)) is None:
            return True
        if revision not in repo.branches:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return True
        files = dict(repo.commits[repo.branches[revision]])
        summary = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                content = value["content"]
                b64 = value.get("encoding") == "base64"
                files[value["path"]] = base64.b64decode(content) if b64 else content.encode()
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
            else:  # lfsFile / xet: never requested by this server's preupload answer
                self._error(400, f"test hub server does not accept {key!r} commit operations")
                return True
        sha = repo.commit(files, summary, revision)
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.server.url}/{prefix}{repo_id}/commit/{sha}"
        self._json(200, {"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None})
        return True

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> bool:
        if (repo := self._repo(repo_type, repo_id)) is None:
            return True
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return True
        files = sorted(repo.commits[sha].items())
        siblings = [{"rfilename": p, "size": len(d), "blobId": git_blob_sha1(d)} for p, d in files]
        self._json(200, {"id": repo_id, "author": repo_id.split("/")[0], "sha": sha, "private": False,
                         "siblings": siblings, "tags": []})
        return True

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str, head: bool) -> bool:
        if (repo := self._repo(repo_type, repo_id, head=head)) is None:
            return True
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
            return True
        data = repo.commits[sha].get(path)
        if data is None:  # X-Repo-Commit lets the client cache the absence of the file
            self._error(404, "Entry not found", "EntryNotFound", head=head, **{"X-Repo-Commit": sha})
            return True
        self._send(200, data, {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha,
                               "ETag": f'"{git_blob_sha1(data)}"', "Accept-Ranges": "none"}, head=head)
        return True


class HubServer(ThreadingHTTPServer):
    """The fake Hub on 127.0.0.1 at a free port, served from a daemon thread; use as a context manager."""

    daemon_threads = True

    def __init__(self, token: str = "hf_test"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.token = token
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self._thread = threading.Thread(target=self.serve_forever, name="hub-server", daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Files of a repo at a revision, as the server stores them."""
        repo = self.repos[(repo_type, repo_id)]
        return dict(repo.commits[repo.resolve(revision)])

    def env(self, hf_home: str | os.PathLike) -> dict[str, str]:
        """This process's environment minus any HF_* settings, pointed at this server with an empty HF_HOME.

        hf_xet stays enabled (the default user path): the server answers "regular" to every preupload, which
        huggingface_hub honours with and without xet (add HF_HUB_DISABLE_XET=1 for the legacy commit path).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(
            HF_ENDPOINT=self.url,
            HF_TOKEN=self.token,
            HF_HOME=str(hf_home),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
        )
        return env
