"""`fluxtrain fetch` against HTTP servers on 127.0.0.1 (port 0) written here, which play the Hugging Face
Hub (tree API with Link pagination, resolve URLs redirecting LFS files to a CDN on another port), Kaggle's
download API (public sets without credentials, private ones with basic auth, redirect to storage) and plain
archive hosts. No real network is ever used. Every server counts the requests it gets, with their headers."""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import random
import tarfile
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

from conftest import run
from fake_http import Server, error, reply

HF_TOKEN = "hf_testSECRETtoken0123456789abcdef"
KAGGLE_USER = "kaggler"
KAGGLE_KEY = "kaggleSECRETkey9876543210"
PAGE = 2  # tree entries per page, so that every listing is paginated


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


class World:
    """What the fake servers hold."""

    def __init__(self):
        big = rand(300_000, 3)
        self.hub = {
            "owner/pets": {
                ".gitattributes": b"*.png filter=lfs\n",
                "README.md": b"# pets\n",
                "captions/cat.txt": b"a cat",
                "images/cat.png": rand(5000, 1),
                "images/sub/dog.png": rand(7000, 2),
                "big/resume.bin": big,
            },
            "owner/private-set": {"a.txt": b"private", "img/x.png": rand(4000, 4)},
            "owner/one-folder": {"set/a.png": rand(3000, 5), "set/a.txt": b"caption"},
            "owner/badhash": {"ok.txt": b"fine", "bad.png": rand(2000, 6)},
            "owner/flaky": {"a.txt": b"never served"},
        }
        self.lfs_suffixes = (".png", ".bin")
        self.private = {"owner/private-set"}
        self.always_500 = {"owner/flaky"}
        self.wrong_hash = {("owner/badhash", "bad.png")}
        self.files: dict[str, bytes] = {}  # /files/<name> for plain URLs
        self.kaggle: dict[str, bytes] = {}
        self.kaggle_private: set[str] = set()
        self.cdn_blobs: dict[str, bytes] = {}
        self.drop_first: set[str] = set()  # request paths (no query) cut half-way the first time
        self.dropped: set[str] = set()
        self.cdn_url = ""

    def is_lfs(self, path: str) -> bool:
        return path.endswith(self.lfs_suffixes)


def send_content(world: World, handler, data: bytes, key: str):
    """200 (or 206 for a Range request) with the data; the first request of a drop_first key is cut."""
    if key in world.drop_first and key not in world.dropped:
        world.dropped.add(key)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[: len(data) // 2])
        handler.wfile.flush()
        handler.close_connection = True
        return
    rng = handler.headers.get("Range")
    if rng:
        start = int(rng.removeprefix("bytes=").split("-")[0])
        reply(handler, 206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
    else:
        reply(handler, 200, data)


def tree_entries(world: World, repo: str) -> list[dict]:
    files = world.hub[repo]
    folders = sorted({str(Path(p).parent) for p in files if "/" in p})
    entries = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in folders]
    for path, data in sorted(files.items()):
        entry = {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": path}
        if world.is_lfs(path):
            sha = hashlib.sha256(data).hexdigest()
            if (repo, path) in world.wrong_hash:
                sha = hashlib.sha256(data + b"x").hexdigest()
            entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
        entries.append(entry)
    return entries


def hub_app(world: World, base: str):
    def app(handler):
        url = urlsplit(handler.path)
        parts = [unquote(p) for p in url.path.split("/")]
        # /api/datasets/{owner}/{name}/tree/{rev}   or   /datasets/{owner}/{name}/resolve/{rev}/{path...}
        if url.path.startswith("/api/v1/datasets/download/"):
            return kaggle(world, handler, "/".join(parts[5:7]))
        if url.path.startswith("/files/"):
            name = parts[2]
            if name == "broken.tar.gz":
                return error(handler, 500, "internal error")
            if name not in world.files:
                return error(handler, 404, "no such file")
            return send_content(world, handler, world.files[name], url.path)
        if url.path.startswith("/api/datasets/") and len(parts) >= 7 and parts[5] == "tree":
            repo, kind = f"{parts[3]}/{parts[4]}", "tree"
        elif url.path.startswith("/datasets/") and len(parts) >= 7 and parts[4] == "resolve":
            repo, kind = f"{parts[2]}/{parts[3]}", "resolve"
        else:
            return error(handler, 404, "unknown route")
        if repo in world.always_500:
            return error(handler, 500, "Internal Error - We're working hard to fix this as soon as possible!")
        if repo not in world.hub:
            # As the real Hub: 401 to an anonymous request (a private repository looks the same), else 404.
            status = 404 if handler.headers.get("Authorization") else 401
            return reply(handler, status, b'{"error":"Repository not found"}',
                         {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
        if repo in world.private and handler.headers.get("Authorization") != f"Bearer {HF_TOKEN}":
            return error(handler, 401, "Invalid credentials in Authorization header")
        if kind == "tree":
            query = parse_qs(url.query)
            assert query.get("recursive") == ["true"], url.query
            entries = tree_entries(world, repo)
            cursor = int(query.get("cursor", ["0"])[0])
            headers = {"Content-Type": "application/json"}
            if cursor + PAGE < len(entries):
                next_url = f"{base}{url.path}?recursive=true&expand=false&cursor={cursor + PAGE}"
                headers["Link"] = f'<{next_url}>; rel="next"'
            return reply(handler, 200, json.dumps(entries[cursor:cursor + PAGE]).encode(), headers)
        path = "/".join(parts[6:])
        if path not in world.hub[repo]:
            return error(handler, 404, "Entry not found")
        data = world.hub[repo][path]
        if world.is_lfs(path):
            sha = hashlib.sha256(data).hexdigest()
            world.cdn_blobs[sha] = data
            return reply(handler, 302, b"", {"Location": f"{world.cdn_url}/blob/{sha}?X-Amz-Signature=s3cr3tsig"})
        return send_content(world, handler, data, url.path)

    return app


KAGGLE_BASIC = "Basic " + base64.b64encode(f"{KAGGLE_USER}:{KAGGLE_KEY}".encode()).decode()


def kaggle(world: World, handler, repo: str):
    """Kaggle's download API: a public set without credentials, a private one with them; wrong credentials
    are refused whatever the set."""
    auth = handler.headers.get("Authorization")
    if auth is not None and auth != KAGGLE_BASIC:
        return error(handler, 401, "Unauthenticated")
    if repo in world.kaggle_private and auth is None:
        return error(handler, 403, "Permission 'datasets.get' was denied")
    if repo not in world.kaggle:
        return error(handler, 404, "Not found")
    sha = hashlib.sha256(world.kaggle[repo]).hexdigest()
    world.cdn_blobs[sha] = world.kaggle[repo]
    return reply(handler, 302, b"", {"Location": f"{world.cdn_url}/blob/{sha}?GoogleAccessId=x&Signature=y"})


def cdn_app(world: World):
    def app(handler):
        url = urlsplit(handler.path)
        sha = url.path.removeprefix("/blob/")
        if sha not in world.cdn_blobs:
            return error(handler, 404, "NoSuchKey")
        send_content(world, handler, world.cdn_blobs[sha], url.path)

    return app


@pytest.fixture(scope="module")
def servers():
    world = World()
    cdn = Server(cdn_app(world))
    world.cdn_url = cdn.url
    hub = Server(None)
    hub.app = hub_app(world, hub.url)
    yield world, hub, cdn
    hub.close()
    cdn.close()


@pytest.fixture
def world(servers):
    world, hub, cdn = servers
    hub.requests.clear()
    cdn.requests.clear()
    world.drop_first.clear()
    world.dropped.clear()
    return servers


def fetch_env(hub: Server, tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING", "KAGGLE_", "DATASET_", "FLUXTRAIN_"))
           and not k.lower().endswith("_proxy")}
    env.update(HOME=str(tmp_path / "home"), HF_ENDPOINT=hub.url, KAGGLE_API_ENDPOINT=hub.url,
               NO_PROXY="127.0.0.1,localhost", FLUXTRAIN_HTTP_RETRIES="2", FLUXTRAIN_HTTP_BACKOFF_SECONDS="0.01",
               FLUXTRAIN_DOWNLOAD_WORKERS="3")
    env.update(extra)
    return env


def fetch(fluxtrain_bin, tmp_path, hub, *args, check=True, **env):
    cache = tmp_path / "cache"
    result = run([fluxtrain_bin, "--log-level", "debug", "fetch", *args, "--cache-dir", cache], check=check,
                 env=fetch_env(hub, tmp_path, **env), timeout=300)
    return result, cache


def last_line(result) -> Path:
    return Path(result.stdout.strip().splitlines()[-1])


def tree_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_nothing_in(cache: Path):
    left = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*")) if cache.exists() else []
    assert left == [], f"left in the cache: {left}"


def paths(server: Server) -> list[str]:
    return [r["path"] for r in server.requests]


# --- Hugging Face Hub ---

def test_hub_listing_pagination_lfs_and_no_refetch(fluxtrain_bin, tmp_path, world):
    w, hub, cdn = world
    result, cache = fetch(fluxtrain_bin, tmp_path, hub, "owner/pets")
    root = last_line(result)
    expected = {k: v for k, v in w.hub["owner/pets"].items() if k != ".gitattributes"}
    assert root.name == "dataset" and root.is_relative_to(cache / "hub")
    assert tree_of(root) == expected
    # Every page of the listing was asked for (entries: 3 folders + 6 files, 2 a page).
    tree_requests = [p for p in paths(hub) if "/tree/" in p]
    assert len(tree_requests) == 5, tree_requests
    assert tree_requests[0] == "/api/datasets/owner/pets/tree/main?recursive=true&expand=false"
    # LFS files went through the CDN, the others straight from the Hub.
    assert sorted(p.split("?")[0] for p in paths(cdn)) == sorted(
        f"/blob/{hashlib.sha256(expected[f]).hexdigest()}" for f in expected if w.is_lfs(f))
    marker = json.loads((root.parent / "complete.json").read_text())
    assert marker["files"] == len(expected) and marker["revision"] == "main"

    # A second fetch of the same dataset makes no request at all.
    before = (len(hub.requests), len(cdn.requests))
    again, _ = fetch(fluxtrain_bin, tmp_path, hub, "owner/pets")
    assert last_line(again) == root
    assert (len(hub.requests), len(cdn.requests)) == before
    assert "using the cached copy" in again.stderr

    # --refresh lists again but downloads nothing that is unchanged.
    before = (len(hub.requests), len(cdn.requests))
    refreshed, _ = fetch(fluxtrain_bin, tmp_path, hub, "owner/pets", "--refresh")
    assert last_line(refreshed) == root and tree_of(root) == expected
    new = paths(hub)[before[0]:]
    assert all("/tree/" in p for p in new) and len(cdn.requests) == before[1], new


def test_hub_token_goes_to_the_hub_only_and_is_never_printed(fluxtrain_bin, tmp_path, world):
    w, hub, cdn = world
    result, _ = fetch(fluxtrain_bin, tmp_path, hub, "owner/private-set", HF_TOKEN=HF_TOKEN)
    assert tree_of(last_line(result)) == w.hub["owner/private-set"]
    # Kaggle's download API (DATASET_HOST, the same server here) was asked first, without the Hub's token.
    kaggle_requests = [r for r in hub.requests if r["path"].startswith("/api/v1/datasets/download/")]
    hub_requests = [r for r in hub.requests if r not in kaggle_requests]
    assert len(kaggle_requests) == 1 and "Authorization" not in kaggle_requests[0]["headers"]
    assert hub_requests and all(r["headers"].get("Authorization") == f"Bearer {HF_TOKEN}" for r in hub_requests)
    # The CDN (another port: another origin) never sees it.
    assert cdn.requests and all("Authorization" not in r["headers"] for r in cdn.requests)
    assert HF_TOKEN not in result.stdout + result.stderr
    assert "s3cr3tsig" not in result.stdout + result.stderr  # signed URLs are shown without their query


def test_hub_revision_and_single_top_folder(fluxtrain_bin, tmp_path, world):
    w, hub, _ = world
    result, cache = fetch(fluxtrain_bin, tmp_path, hub, "hf:owner/one-folder", "--revision", "refs/pr/1")
    root = last_line(result)
    assert root.name == "set" and root.parent.name == "dataset"
    assert tree_of(root) == {"a.png": w.hub["owner/one-folder"]["set/a.png"], "a.txt": b"caption"}
    assert any(p.startswith("/api/datasets/owner/one-folder/tree/refs%2Fpr%2F1?") for p in paths(hub))
    assert any(p == "/datasets/owner/one-folder/resolve/refs%2Fpr%2F1/set/a.txt" for p in paths(hub))


def test_hub_wrong_sha256_is_an_error(fluxtrain_bin, tmp_path, world):
    _, hub, _ = world
    result, cache = fetch(fluxtrain_bin, tmp_path, hub, "owner/badhash", check=False)
    assert result.returncode == 1
    assert "file 'bad.png' of Hugging Face dataset owner/badhash" in result.stderr
    assert "sha256 is" in result.stderr and "expected" in result.stderr
    assert not list(cache.rglob("complete.json")) and not list(cache.rglob("dataset"))
    assert not list(cache.rglob("bad.png")) and not list(cache.rglob("bad.png.part"))


# --- Kaggle ---

def make_zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def test_kaggle_private_zip_with_basic_auth(fluxtrain_bin, tmp_path, world):
    w, hub, cdn = world
    files = {"train/1.jpg": rand(6000, 7), "train/1.txt": b"one", "labels.csv": b"a,b\n"}
    w.kaggle["kowner/kset"] = make_zip(files)
    w.kaggle_private.add("kowner/kset")
    result, _ = fetch(fluxtrain_bin, tmp_path, hub, "kaggle:kowner/kset",
                      KAGGLE_USERNAME=KAGGLE_USER, KAGGLE_KEY=KAGGLE_KEY)
    assert tree_of(last_line(result)) == files
    assert paths(hub) == ["/api/v1/datasets/download/kowner/kset"]
    assert hub.requests[0]["headers"]["Authorization"].startswith("Basic ")
    assert cdn.requests and all("Authorization" not in r["headers"] for r in cdn.requests)
    assert KAGGLE_KEY not in result.stdout + result.stderr

    bad, cache = fetch(fluxtrain_bin, tmp_path / "bad", hub, "kaggle:kowner/kset", check=False,
                       KAGGLE_USERNAME=KAGGLE_USER, KAGGLE_KEY="wrong-key-123456")
    assert bad.returncode == 1
    assert "access denied (HTTP 401" in bad.stderr and "KAGGLE_USERNAME and KAGGLE_KEY" in bad.stderr
    assert "wrong-key-123456" not in bad.stdout + bad.stderr
    assert_nothing_in(cache)

    missing, cache = fetch(fluxtrain_bin, tmp_path / "missing", hub, "kaggle:kowner/kset", check=False)
    assert missing.returncode == 1 and "access denied (HTTP 403" in missing.stderr
    assert "no credentials were sent: set KAGGLE_USERNAME and KAGGLE_KEY" in missing.stderr


# --- the seed's DATASET_NAME=owner/name: the zip at DATASET_HOST/owner/name (Kaggle), then the Hub ---

@pytest.fixture(scope="module")
def kaggle_server(servers):
    """Kaggle's download API on its own server (another origin than the Hub and the CDN)."""
    world, _, _ = servers

    def app(handler):
        path = urlsplit(handler.path).path
        if not path.startswith("/api/v1/datasets/download/"):
            return error(handler, 404, "unknown route")
        return kaggle(world, handler, unquote(path.removeprefix("/api/v1/datasets/download/")))

    server = Server(app)
    yield server
    server.close()


@pytest.fixture
def seed(world, kaggle_server):
    kaggle_server.requests.clear()
    return (*world, kaggle_server)


def seed_fetch(fluxtrain_bin, tmp_path, hub, kaggle_server, dataset, check=True, **env):
    """`fluxtrain fetch` as the seed's container is configured: DATASET_NAME, DATASET_HOST and DATASET_PATH
    only (no argument, no --cache-dir; KAGGLE_API_ENDPOINT of fetch_env is overridden by DATASET_HOST)."""
    env = fetch_env(hub, tmp_path, DATASET_NAME=dataset, DATASET_HOST=f"{kaggle_server.url}/api/v1/datasets/download",
                    DATASET_PATH=str(tmp_path / "workspace-dataset"), **env)
    result = run([fluxtrain_bin, "--log-level", "debug", "fetch"], check=check, env=env, timeout=300)
    return result, tmp_path / "workspace-dataset"


def kaggle_path(repo: str) -> str:
    return f"/api/v1/datasets/download/{repo}"


def test_seed_name_comes_from_dataset_host_without_credentials(fluxtrain_bin, tmp_path, seed):
    w, hub, cdn, kag = seed
    files = {"img/1.png": rand(4000, 40), "img/1.txt": b"seed one", "img/2.png": rand(3000, 41)}
    w.kaggle["seedowner/public-set"] = make_zip(files)
    result, dataset_path = seed_fetch(fluxtrain_bin, tmp_path, hub, kag, "seedowner/public-set")
    root = last_line(result)
    assert tree_of(root) == {k.removeprefix("img/"): v for k, v in files.items()}
    # It landed in DATASET_PATH, in the cache's layout: kaggle/<name>-<hash>/dataset, with its marker.
    assert root.is_relative_to(dataset_path / "kaggle") and root.name == "img" and root.parent.name == "dataset"
    assert json.loads((root.parent.parent / "complete.json").read_text())["source"] == "kaggle:seedowner/public-set"
    assert paths(kag) == [kaggle_path("seedowner/public-set")]
    assert "Authorization" not in kag.requests[0]["headers"]
    assert not hub.requests  # found on Kaggle: the Hub is not asked
    assert "was served by Kaggle (DATASET_HOST " + kag.url + "/api/v1/datasets/download)" in result.stderr
    # Again: from DATASET_PATH, without any request.
    again, _ = seed_fetch(fluxtrain_bin, tmp_path, hub, kag, "seedowner/public-set")
    assert last_line(again) == root and "using the cached copy of kaggle:seedowner/public-set" in again.stderr
    assert len(kag.requests) == 1 and not hub.requests


def test_seed_name_not_on_kaggle_comes_from_the_hub(fluxtrain_bin, tmp_path, seed):
    w, hub, cdn, kag = seed
    result, dataset_path = seed_fetch(fluxtrain_bin, tmp_path, hub, kag, "owner/one-folder")
    root = last_line(result)
    assert tree_of(root) == {"a.png": w.hub["owner/one-folder"]["set/a.png"], "a.txt": b"caption"}
    assert root.is_relative_to(dataset_path / "hub")
    assert paths(kag) == [kaggle_path("owner/one-folder")]  # asked first, answered 404
    assert any("/tree/main" in p for p in paths(hub))
    assert "owner/one-folder: Kaggle does not have it (HTTP 404); trying the Hugging Face Hub" in result.stderr
    assert f"was served by the Hugging Face Hub (HF_ENDPOINT {hub.url})" in result.stderr
    # Again: the Hub's copy in DATASET_PATH, without asking Kaggle again.
    again, _ = seed_fetch(fluxtrain_bin, tmp_path, hub, kag, "owner/one-folder")
    assert last_line(again) == root and len(kag.requests) == 1
    # A revision that is no Kaggle version number asks the Hub only.
    kag.requests.clear()
    branch, _ = seed_fetch(fluxtrain_bin, tmp_path / "rev", hub, kag, "owner/one-folder", DATASET_REVISION="refs/pr/1")
    assert tree_of(last_line(branch)) == tree_of(root) and not kag.requests
    assert "not asking Kaggle (DATASET_HOST): the revision 'refs/pr/1' is not a Kaggle version number" in branch.stderr


def test_seed_name_on_neither_source_is_one_error_listing_both(fluxtrain_bin, tmp_path, seed):
    _, hub, _, kag = seed
    result, dataset_path = seed_fetch(fluxtrain_bin, tmp_path, hub, kag, "owner/nowhere", check=False)
    assert result.returncode == 1 and result.stdout == ""
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(error_lines) == 1, result.stderr
    message = error_lines[0]
    for words in ["dataset 'owner/nowhere' was found neither on Kaggle nor on the Hugging Face Hub",
                  f"1) Kaggle (DATASET_HOST): Kaggle dataset owner/nowhere was not found (HTTP 404 from "
                  f"{kag.url}/api/v1/datasets/download/owner/nowhere)",
                  "2) the Hugging Face Hub (HF_ENDPOINT): the file list of Hugging Face dataset owner/nowhere",
                  f"(HTTP 401 RepoNotFound from {hub.url}/api/datasets/owner/nowhere/tree/main",
                  "Fix: check the name (https://www.kaggle.com/datasets/owner/nowhere, "
                  f"{hub.url}/datasets/owner/nowhere)",
                  "KAGGLE_USERNAME and KAGGLE_KEY for Kaggle, HF_TOKEN for the Hub",
                  "write kaggle:owner/nowhere or hf:owner/nowhere to ask one source only"]:
        assert words in message, message
    assert paths(kag) == [kaggle_path("owner/nowhere")] and len(hub.requests) == 1
    assert_nothing_in(dataset_path)


def test_kaggle_credentials_go_to_dataset_host_only(fluxtrain_bin, tmp_path, seed):
    w, hub, cdn, kag = seed
    files = {"p.png": rand(2500, 42), "p.txt": b"private caption"}
    w.kaggle["seedowner/private-set"] = make_zip(files)
    w.kaggle_private.add("seedowner/private-set")
    creds = {"KAGGLE_USERNAME": KAGGLE_USER, "KAGGLE_KEY": KAGGLE_KEY}
    result, _ = seed_fetch(fluxtrain_bin, tmp_path, hub, kag, "seedowner/private-set", **creds)
    assert tree_of(last_line(result)) == files
    assert [r["headers"].get("Authorization") for r in kag.requests] == [KAGGLE_BASIC]
    assert cdn.requests and all("Authorization" not in r["headers"] for r in cdn.requests)  # the redirect
    # A name Kaggle does not have goes on to the Hub, which never sees the Kaggle credentials.
    hub_result, _ = seed_fetch(fluxtrain_bin, tmp_path / "hub", hub, kag, "owner/one-folder", **creds)
    assert "served by the Hugging Face Hub" in hub_result.stderr
    assert kag.requests[-1]["headers"].get("Authorization") == KAGGLE_BASIC
    assert hub.requests and all("Authorization" not in r["headers"] for r in hub.requests)
    for out in (result, hub_result):
        assert KAGGLE_KEY not in out.stdout + out.stderr
    # Without them, the private set is refused (403) and, on neither source, the error names the variables.
    anonymous, _ = seed_fetch(fluxtrain_bin, tmp_path / "anon", hub, kag, "seedowner/private-set", check=False)
    assert anonymous.returncode == 1
    assert "access denied (HTTP 403" in anonymous.stderr and "KAGGLE_USERNAME and KAGGLE_KEY" in anonymous.stderr
    # Half of them is a named error before any request.
    kag.requests.clear()
    half, _ = seed_fetch(fluxtrain_bin, tmp_path / "half", hub, kag, "seedowner/private-set", check=False,
                         KAGGLE_USERNAME=KAGGLE_USER)
    assert half.returncode == 1 and "KAGGLE_USERNAME is set but KAGGLE_KEY is not" in half.stderr
    assert not kag.requests


def test_kaggle_and_hf_prefixes_ask_one_source_only(fluxtrain_bin, tmp_path, seed):
    w, hub, _, kag = seed
    w.kaggle["seedowner/only-kaggle"] = make_zip({"k.png": rand(1000, 43)})
    # kaggle: a Hub-only dataset is an error; the Hub is not asked.
    result, _ = seed_fetch(fluxtrain_bin, tmp_path / "k", hub, kag, "kaggle:owner/one-folder", check=False)
    assert result.returncode == 1 and not hub.requests and paths(kag) == [kaggle_path("owner/one-folder")]
    assert "Kaggle dataset owner/one-folder was not found (HTTP 404 from " + kag.url in result.stderr
    assert "for a Hugging Face dataset write hf:owner/one-folder" in result.stderr
    # hf: a Kaggle-only dataset is an error; Kaggle is not asked.
    kag.requests.clear()
    result, _ = seed_fetch(fluxtrain_bin, tmp_path / "h", hub, kag, "hf:seedowner/only-kaggle", check=False)
    assert result.returncode == 1 and not kag.requests and hub.requests
    assert "Hugging Face dataset seedowner/only-kaggle" in result.stderr
    assert "for a Kaggle dataset write kaggle:seedowner/only-kaggle" in result.stderr
    # Each works on its own source.
    hub.requests.clear()
    ok, _ = seed_fetch(fluxtrain_bin, tmp_path / "ok", hub, kag, "kaggle:seedowner/only-kaggle")
    assert tree_of(last_line(ok)) == {"k.png": rand(1000, 43)} and not hub.requests
    kag.requests.clear()
    ok, _ = seed_fetch(fluxtrain_bin, tmp_path / "ok", hub, kag, "hf:owner/one-folder")
    assert "a.txt" in tree_of(last_line(ok)) and not kag.requests


# --- URLs ---

def make_tar(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zstd_compress(data: bytes) -> bytes:
    # zstandard is pinned in requirements-test.txt: a venv without it fails here instead of skipping.
    import zstandard

    compressed = zstandard.ZstdCompressor().compress(data)
    assert zstandard.ZstdDecompressor().decompress(compressed) == data
    return compressed


def test_url_tar_gz_with_one_top_folder(fluxtrain_bin, tmp_path, world):
    w, hub, _ = world
    files = {"myset/a.png": rand(9000, 8), "myset/a.txt": b"caption a", "myset/sub/b.png": rand(100, 9)}
    w.files["set.tar.gz"] = make_tar(files)
    result, cache = fetch(fluxtrain_bin, tmp_path, hub, f"{hub.url}/files/set.tar.gz")
    root = last_line(result)
    assert root.name == "myset" and root.parent.name == "dataset"
    assert tree_of(root) == {k.removeprefix("myset/"): v for k, v in files.items()}
    # The downloaded archive is removed once extracted.
    assert not list(cache.rglob("download")) and not list(cache.rglob("*.part"))


def test_url_tar_zst(fluxtrain_bin, tmp_path, world):
    w, hub, _ = world
    files = {"a.png": rand(5000, 10), "a.txt": b"zst caption"}
    w.files["set.tar.zst"] = zstd_compress(make_tar(files, "w"))
    result, _ = fetch(fluxtrain_bin, tmp_path, hub, f"{hub.url}/files/set.tar.zst")
    assert tree_of(last_line(result)) == files


def test_url_single_file(fluxtrain_bin, tmp_path, world):
    w, hub, _ = world
    w.files["photo.png"] = rand(2000, 11)
    result, _ = fetch(fluxtrain_bin, tmp_path, hub, f"{hub.url}/files/photo.png?download=1")
    assert tree_of(last_line(result)) == {"photo.png": w.files["photo.png"]}


def test_interrupted_download_is_resumed_with_range(fluxtrain_bin, tmp_path, world):
    w, hub, _ = world
    files = {f"img/{i}.png": rand(50_000, 100 + i) for i in range(8)}
    w.files["resume.tar"] = make_tar(files, "w")
    w.drop_first.add("/files/resume.tar")
    result, _ = fetch(fluxtrain_bin, tmp_path, hub, f"{hub.url}/files/resume.tar")
    assert tree_of(last_line(result)) == {k.removeprefix("img/"): v for k, v in files.items()}
    requests = [r for r in hub.requests if r["path"] == "/files/resume.tar"]
    assert len(requests) == 2
    assert "Range" not in requests[0]["headers"]
    half = len(w.files["resume.tar"]) // 2
    assert requests[1]["headers"].get("Range") == f"bytes={half}-"


def test_interrupted_hub_lfs_download_is_resumed_through_the_redirect(fluxtrain_bin, tmp_path, world):
    w, hub, cdn = world
    data = w.hub["owner/pets"]["big/resume.bin"]
    key = f"/blob/{hashlib.sha256(data).hexdigest()}"
    w.drop_first.add(key)
    result, _ = fetch(fluxtrain_bin, tmp_path, hub, "owner/pets")
    assert (last_line(result) / "big/resume.bin").read_bytes() == data
    requests = [r for r in cdn.requests if r["path"].split("?")[0] == key]
    assert [r["headers"].get("Range") for r in requests] == [None, f"bytes={len(data) // 2}-"]


# --- errors: clear, exit 1, nothing left in the cache ---

@pytest.mark.parametrize("case", ["401", "401-wrong-token", "404", "404-anonymous", "500", "500-url", "404-url"])
def test_http_errors(fluxtrain_bin, tmp_path, world, case):
    _, hub, _ = world
    spec, env, words = {
        "401": ("owner/private-set", {}, ["access denied (HTTP 401", "no credentials were sent: set HF_TOKEN"]),
        "401-wrong-token": ("owner/private-set", {"HF_TOKEN": "hf_wrongWRONGwrong123"},
                            ["access denied (HTTP 401", "the credentials from HF_TOKEN were refused"]),
        "404": ("owner/nope", {"HF_TOKEN": "hf_wrongWRONGwrong123"},
                ["Hugging Face dataset owner/nope", "was not found (HTTP 404", "Repository not found",
                 "/datasets/owner/nope"]),
        "404-anonymous": ("owner/nope", {}, ["Hugging Face dataset owner/nope", "was not found, or is private",
                                             "RepoNotFound", "/datasets/owner/nope", "set HF_TOKEN"]),
        "500": ("owner/flaky", {}, ["HTTP 500", "to every try", "try again later"]),
        "500-url": (f"{hub.url}/files/broken.tar.gz", {}, ["HTTP 500", "try again later"]),
        "404-url": (f"{hub.url}/files/missing.tar.gz", {}, ["was not found (HTTP 404", "check the URL"]),
    }[case]
    result, cache = fetch(fluxtrain_bin, tmp_path, hub, spec, check=False, **env)
    assert result.returncode == 1, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(error_lines) == 1, result.stderr
    for word in words:
        assert word in error_lines[0], error_lines[0]
    # A bare owner/name asks Kaggle's download API (DATASET_HOST, here the same server) first: one 404.
    kaggle_tries = 0 if "://" in spec else 1
    assert len([p for p in paths(hub) if p.startswith("/api/v1/datasets/download/")]) == kaggle_tries
    if case.startswith("500"):
        assert len(hub.requests) == kaggle_tries + 3  # FLUXTRAIN_HTTP_RETRIES=2
    else:
        assert len(hub.requests) == kaggle_tries + 1  # 4xx is not retried
    assert "hf_wrongWRONGwrong123" not in result.stdout + result.stderr
    assert result.stdout == ""
    assert_nothing_in(cache)


# --- hostile archives: refused, nothing written outside the target ---

def write_bomb(size: int) -> bytes:
    """A tar.gz of `size` zero bytes, ~1000:1: concatenated gzip members of 1 MiB of zeros each."""
    info = tarfile.TarInfo("zeros.bin")
    info.size = size
    mib = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    return (gzip.compress(info.tobuf(format=tarfile.PAX_FORMAT), mtime=0) + mib * (size >> 20)
            + gzip.compress(bytes(1024), mtime=0))


def hostile(kind: str, outside: Path) -> tuple[str, bytes]:
    if kind == "zip-slip":
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            z.writestr("ok.txt", b"fine")
            z.writestr("../evil", b"pwned")
        return "slip.zip", out.getvalue()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        def add(info, data=b""):
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if kind == "absolute":
            add(tarfile.TarInfo(str(outside / "evil")), b"pwned")
        elif kind == "symlink":
            link = tarfile.TarInfo("up")
            link.type = tarfile.SYMTYPE
            link.linkname = "../../../.."
            add(link)
            add(tarfile.TarInfo("up/evil"), b"pwned")
    return f"{kind}.tar.gz", out.getvalue()


@pytest.mark.parametrize("kind", ["zip-slip", "absolute", "symlink", "bomb-limit", "bomb-ratio"])
def test_unsafe_archives_are_refused(fluxtrain_bin, tmp_path, world, kind):
    w, hub, _ = world
    outside = tmp_path / "outside"
    outside.mkdir()
    env = {}
    if kind.startswith("bomb"):
        name, data = "bomb.tar.gz", write_bomb(1 << 30)
        if kind == "bomb-limit":
            env["FLUXTRAIN_ARCHIVE_MAX_BYTES"] = "10M"
        words = ["'zeros.bin'", "limit on the uncompressed total" if kind == "bomb-limit" else "expands more than 200:1"]
    else:
        name, data = hostile(kind, outside)
        words = {"zip-slip": ["'../evil'", "'..'"], "absolute": ["absolute path"],
                 "symlink": ["'up'", "symbolic link", "outside the extraction folder"]}[kind]
    w.files[name] = data
    result, cache = fetch(fluxtrain_bin, tmp_path, hub, f"{hub.url}/files/{name}", check=False, **env)
    assert result.returncode == 1, result.stderr
    assert f"archive '{hub.url}/files/{name}'" in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    # Nothing was extracted anywhere: no dataset folder, no temporary folder, no "evil" file.
    assert not list(tmp_path.rglob("evil")) and not list(outside.iterdir())
    entries = list((cache / "url").iterdir())
    assert len(entries) == 1
    assert sorted(p.name for p in entries[0].iterdir()) == ["download"]  # the archive is kept: no re-download
    if kind == "bomb-ratio":
        # The refusal comes early: far less than the 1 GiB was written.
        assert "zeros.bin" not in [p.name for p in cache.rglob("*")]


# --- local folders ---

def test_local_folder_and_missing_path(fluxtrain_bin, tmp_path, world):
    _, hub, _ = world
    folder = tmp_path / "my data"
    folder.mkdir()
    result, cache = fetch(fluxtrain_bin, tmp_path, hub, str(folder))
    assert last_line(result) == folder
    assert not hub.requests and not cache.exists()
    missing, _ = fetch(fluxtrain_bin, tmp_path, hub, str(tmp_path / "nope" / "x" / "y"), check=False)
    assert missing.returncode == 1 and "no such folder" in missing.stderr
    # A local archive is extracted into the cache, once.
    files = {"a.png": rand(1000, 12), "a.txt": b"local"}
    (tmp_path / "local.tar.gz").write_bytes(make_tar(files))
    extracted, _ = fetch(fluxtrain_bin, tmp_path, hub, str(tmp_path / "local.tar.gz"))
    root = last_line(extracted)
    assert root.is_relative_to(cache / "local") and tree_of(root) == files
    again, _ = fetch(fluxtrain_bin, tmp_path, hub, str(tmp_path / "local.tar.gz"))
    assert last_line(again) == root and "using the cached copy" in again.stderr
    assert not hub.requests


def test_revision_not_allowed_for_urls(fluxtrain_bin, tmp_path, world):
    _, hub, _ = world
    result, _ = fetch(fluxtrain_bin, tmp_path, hub, f"{hub.url}/files/x.zip", "--revision", "v1", check=False)
    assert result.returncode == 1 and "applies only to Hugging Face and Kaggle" in result.stderr
    assert not hub.requests
