"""A Hugging Face Hub on 127.0.0.1 that speaks the write API the way huggingface_hub's client uses it
(huggingface_hub/_commit_api.py, lfs.py, hf_api.py), and serves what it received back: the tests of
HF_UPLOAD_REPO (tests/e2e/test_hub_upload.py) drive it with fluxtrain and with the real client.

  GET  /api/whoami-v2                                  the token's user and role
  POST /api/repos/create                               {name, organization, private}; 409 when it exists
  POST /api/models/{repo}/preupload/{rev}              uploadMode per file: "lfs" for binary samples, LFS
                                                       extensions or > 10 MB, else "regular"
  POST /{repo}.git/info/lfs/objects/batch              per object: no actions when the store has it; else an
                                                       upload action, basic (one PUT) or, above
                                                       `multipart_above` bytes, multipart (chunk_size and one
                                                       URL per part, then a completion POST of the ETags), and
                                                       a verify action
  POST /api/models/{repo}/commit/{rev}                 NDJSON: header, file (base64), lfsFile (the object
                                                       must be in the store with that size), deletedFile,
                                                       deletedFolder; applied atomically
  POST /api/validate-yaml                              a README's front matter (always fine here)
  GET  /api/models/{repo}/tree/{rev}[/{folder}]        the listing (lfs.oid for LFS files)
  HEAD/GET /{repo}/resolve/{rev}/{path}                the file, with X-Repo-Commit, ETag / X-Linked-Etag

`drop` makes the next N requests of a kind ("lfs-put", "commit", ...) lose their connection halfway through
the body, as a flaky network does. Every request is recorded (fake_http.Server.requests)."""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import socket
import threading

from fake_http import Server, error, reply

LFS_EXTENSIONS = (".safetensors", ".png", ".jpg", ".webp", ".bin", ".pt")


class FakeHub:
    def __init__(self, token: str = "hf_fake_write_token_0123456789", user: str = "tester",
                 role: str = "write", multipart_above: int = 1 << 62, chunk_size: int = 64 * 1024):
        self.token, self.user, self.role = token, user, role
        self.multipart_above, self.chunk_size = multipart_above, chunk_size
        self.repos: dict[str, dict] = {}      # repo id -> {"private", "files": {path: (bytes, lfs oid|None)}, "commits"}
        self.store: dict[str, bytes] = {}     # LFS objects by sha256
        self.parts: dict[str, dict[int, bytes]] = {}
        self.drop: dict[str, int] = {}
        self.down = False  # every request answered 503 (a Hub outage)
        self.events: list[tuple[str, str]] = []  # (kind, detail) of what happened, in order
        self.lock = threading.Lock()
        self.server = Server(self.app)
        self.url = self.server.url

    def close(self):
        self.server.close()

    # --- helpers
    def _authorized(self, handler, write: bool) -> bool:
        auth = handler.headers.get("Authorization", "")
        if auth != f"Bearer {self.token}":
            error(handler, 401, "Invalid credentials in Authorization header")
            return False
        if write and self.role == "read":
            error(handler, 403, "You don't have the rights to create a model under this namespace")
            return False
        return True

    def _body(self, handler, kind: str) -> bytes | None:
        length = int(handler.headers.get("Content-Length") or 0)
        with self.lock:
            dropping = self.drop.get(kind, 0) > 0
            if dropping:
                self.drop[kind] -= 1
        if dropping:
            handler.rfile.read(length // 2)
            self.events.append(("dropped", kind))
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return None
        return handler.rfile.read(length)

    def _repo(self, handler, repo: str):
        if repo not in self.repos:
            handler.send_response(401)  # the Hub's answer for a missing (or hidden) repository
            body = json.dumps({"error": "Repository not found"}).encode()
            handler.send_header("X-Error-Code", "RepoNotFound")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return None
        return self.repos[repo]

    def files(self, repo: str) -> dict[str, bytes]:
        return {path: data for path, (data, _) in self.repos[repo]["files"].items()}

    def count(self, kind: str, detail: str | None = None) -> int:
        return sum(1 for k, d in self.events if k == kind and (detail is None or d == detail))

    # --- the app
    def app(self, handler):
        path, _, query = handler.path.partition("?")
        method = handler.command
        if self.down:
            handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
            error(handler, 503, "Service Unavailable")
            return
        try:
            if path == "/api/whoami-v2" and method == "GET":
                if self._authorized(handler, False):
                    reply(handler, 200, json.dumps({"type": "user", "name": self.user,
                                                    "auth": {"accessToken": {"role": self.role}}}).encode())
                return
            if path == "/api/repos/create" and method == "POST":
                body = json.loads(self._body(handler, "create") or b"{}")
                if not self._authorized(handler, True):
                    return
                repo = f"{body.get('organization') or self.user}/{body['name']}"
                with self.lock:
                    if repo in self.repos:  # the Hub's 409 also names the repository's URL
                        reply(handler, 409, json.dumps({"error": "You already created this model repo",
                                                        "url": f"{self.url}/{repo}"}).encode(),
                              {"Content-Type": "application/json",
                               "X-Error-Message": "You already created this model repo"})
                        return
                    self.repos[repo] = {"private": bool(body.get("private")), "files": {}, "commits": []}
                self.events.append(("create", repo))
                reply(handler, 200, json.dumps({"url": f"{self.url}/{repo}", "name": repo}).encode())
                return
            if path == "/api/validate-yaml" and method == "POST":  # the client checks a README's front matter
                self._body(handler, "validate-yaml")
                reply(handler, 200, json.dumps({"errors": [], "warnings": []}).encode())
                return
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path):
                body = self._body(handler, "preupload")
                if body is None or not self._authorized(handler, True) or self._repo(handler, m[1]) is None:
                    return
                files = []
                for f in json.loads(body)["files"]:
                    sample = base64.b64decode(f["sample"])
                    lfs = f["path"].endswith(LFS_EXTENSIONS) or f["size"] > 10 << 20 or b"\0" in sample
                    files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                                  "shouldIgnore": False, "oid": None})
                reply(handler, 200, json.dumps({"files": files, "commitOid": "0" * 40}).encode())
                return
            if m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
                body = self._body(handler, "batch")
                if body is None or not self._authorized(handler, True) or self._repo(handler, m[1]) is None:
                    return
                request = json.loads(body)
                assert request["operation"] == "upload" and request.get("hash_algo", "sha256") == "sha256"
                self.events.append(("batch", ",".join(o["oid"] for o in request["objects"])))
                objects = []
                for o in request["objects"]:
                    oid, size = o["oid"], o["size"]
                    if oid in self.store and len(self.store[oid]) == size:
                        objects.append({"oid": oid, "size": size})
                        continue
                    verify = {"href": f"{self.url}/lfs-verify/{oid}", "header": {}}
                    if size > self.multipart_above:
                        n = math.ceil(size / self.chunk_size)
                        header = {"chunk_size": str(self.chunk_size)}
                        header.update({f"{i:05d}": f"{self.url}/lfs-part/{oid}/{i}" for i in range(1, n + 1)})
                        upload = {"href": f"{self.url}/lfs-complete/{oid}", "header": header}
                    else:
                        upload = {"href": f"{self.url}/lfs-upload/{oid}", "header": {}}
                    objects.append({"oid": oid, "size": size, "authenticated": True,
                                    "actions": {"upload": upload, "verify": verify}})
                reply(handler, 200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                      {"Content-Type": "application/vnd.git-lfs+json"})
                return
            if m := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path):
                data = self._body(handler, "lfs-put")
                if data is None:
                    return
                if hashlib.sha256(data).hexdigest() != m[1]:
                    error(handler, 400, "sha256 mismatch")
                    return
                self.store[m[1]] = data
                self.events.append(("lfs-put", m[1]))
                reply(handler, 200)
                return
            if m := re.fullmatch(r"/lfs-part/([0-9a-f]{64})/(\d+)", path):
                data = self._body(handler, "lfs-part")
                if data is None:
                    return
                self.parts.setdefault(m[1], {})[int(m[2])] = data
                self.events.append(("lfs-part", m[1]))
                reply(handler, 200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})
                return
            if m := re.fullmatch(r"/lfs-complete/([0-9a-f]{64})", path):
                body = json.loads(self._body(handler, "lfs-complete") or b"{}")
                parts = self.parts.get(m[1], {})
                ordered = sorted(body["parts"], key=lambda p: p["partNumber"])
                data = b"".join(parts[p["partNumber"]] for p in ordered)
                etags_ok = all(p["etag"] == f'"{hashlib.md5(parts[p["partNumber"]]).hexdigest()}"' for p in ordered)
                if body["oid"] != m[1] or not etags_ok or hashlib.sha256(data).hexdigest() != m[1]:
                    error(handler, 400, "multipart completion does not match")
                    return
                self.store[m[1]] = data
                self.events.append(("lfs-put", m[1]))
                reply(handler, 200)
                return
            if m := re.fullmatch(r"/lfs-verify/([0-9a-f]{64})", path):
                body = json.loads(self._body(handler, "lfs-verify") or b"{}")
                ok = m[1] in self.store and len(self.store[m[1]]) == body.get("size")
                self.events.append(("verify", m[1]))
                reply(handler, 200) if ok else error(handler, 404, "object not found")
                return
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path):
                body = self._body(handler, "commit")
                if body is None or not self._authorized(handler, True):
                    return
                repo = self._repo(handler, m[1])
                if repo is None:
                    return
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                assert lines[0]["key"] == "header", lines[0]
                new = dict(repo["files"])
                for line in lines[1:]:
                    key, value = line["key"], line["value"]
                    if key == "file":
                        assert value.get("encoding") == "base64"
                        new[value["path"]] = (base64.b64decode(value["content"]), None)
                    elif key == "lfsFile":
                        data = self.store.get(value["oid"])
                        if data is None or len(data) != value["size"]:
                            error(handler, 422, f"LFS object {value['oid']} of {value['path']} was not uploaded")
                            return
                        new[value["path"]] = (data, value["oid"])
                    elif key == "deletedFile":
                        new.pop(value["path"], None)
                    elif key == "deletedFolder":
                        prefix = value["path"].rstrip("/") + "/"
                        new = {p: v for p, v in new.items() if not p.startswith(prefix)}
                    else:
                        error(handler, 400, f"unknown commit operation {key}")
                        return
                with self.lock:
                    repo["files"] = new
                    oid = hashlib.sha1(body).hexdigest()
                    repo["commits"].append({"summary": lines[0]["value"]["summary"], "oid": oid,
                                            "paths": [l["value"]["path"] for l in lines[1:]]})
                self.events.append(("commit", m[1]))
                reply(handler, 200, json.dumps({"commitUrl": f"{self.url}/{m[1]}/commit/{oid}", "commitOid": oid,
                                                "success": True}).encode())
                return
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
                if handler.headers.get("Authorization") not in (None, f"Bearer {self.token}"):
                    error(handler, 401, "Invalid credentials in Authorization header")
                    return
                repo = self._repo(handler, m[1])
                if repo is None:
                    return
                folder = (m[3] or "").rstrip("/")
                prefix = folder + "/" if folder else ""
                entries = []
                for p, (data, lfs) in sorted(repo["files"].items()):
                    if not p.startswith(prefix):
                        continue
                    entry = {"type": "file", "path": p, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    if lfs:
                        entry["lfs"] = {"oid": lfs, "size": len(data), "pointerSize": 134}
                    entries.append(entry)
                if folder and not entries:
                    error(handler, 404, f"{folder} does not exist")
                    return
                reply(handler, 200, json.dumps(entries).encode(), {"Content-Type": "application/json"})
                return
            if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                repo = self._repo(handler, m[1])
                if repo is None:
                    return
                item = repo["files"].get(m[3])
                if item is None:
                    error(handler, 404, "Entry not found")
                    return
                data, lfs = item
                commit = repo["commits"][-1]["oid"] if repo["commits"] else "0" * 40
                headers = {"X-Repo-Commit": commit, "ETag": f'"{lfs or hashlib.sha1(data).hexdigest()}"'}
                if lfs:
                    headers.update({"X-Linked-Etag": f'"{lfs}"', "X-Linked-Size": str(len(data))})
                if method == "HEAD":
                    handler.send_response(200)
                    for k, v in headers.items():
                        handler.send_header(k, v)
                    handler.send_header("Content-Length", str(len(data)))
                    handler.end_headers()
                    return
                rng = handler.headers.get("Range")
                if rng:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    reply(handler, 206, data[start:], headers)
                else:
                    reply(handler, 200, data, headers)
                return
            error(handler, 404, f"the fake Hub has no {method} {path}")
        except (BrokenPipeError, ConnectionResetError):
            pass
