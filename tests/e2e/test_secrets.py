"""Credentials go only to the origin they belong to, and a DATASET_NAME URL's secrets never reach a file or
the output (issue 18, item 8). Real HTTP servers on 127.0.0.1 (tests/fake_http.py) record every request's
headers: a fake Hugging Face Hub whose listing continues on another server, a URL host that wants basic auth
and a presigned-looking query, and a host that redirects to another origin."""
from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from conftest import run
from fake_http import Server, error, reply, send_file
from train_env import base_env, dataset, models  # noqa: F401  (fixtures)

HF_TOKEN = "hf_secretsTESTtoken0123456789abcdef"
USER = "u"
# The example is u:pw and s3cr3t; the password is made longer so that a byte search of binary files
# (LoRA weights, optimizer states) cannot match it by chance, and still starts with "pw".
PASSWORD = "pw-8Kq2xZ7mW"
SIGNATURE = "s3cr3t-Zr58bQ1n"


def clean_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING", "KAGGLE_", "DATASET_", "FLUXTRAIN_", "PARAMS_"))
           and not k.lower().endswith("_proxy")}
    env.update(HOME=str(tmp_path / "home"), NO_PROXY="127.0.0.1,localhost", FLUXTRAIN_HTTP_RETRIES="2",
               FLUXTRAIN_HTTP_BACKOFF_SECONDS="0.01")
    env.update(extra)
    return env


def authorizations(server: Server) -> list:
    return [r["headers"].get("Authorization") for r in server.requests]


# --- Hub listing pages on another origin ---

def test_hub_listing_next_page_on_another_origin_gets_no_token(fluxtrain_bin, tmp_path):
    files = {"a.txt": b"first page", "b.txt": b"second page"}
    tree = "/api/datasets/owner/set/tree/main"

    def entry(path):
        return {"type": "file", "oid": "0" * 40, "size": len(files[path]), "path": path}

    def elsewhere_app(handler):  # the listing's second page, on another port
        if urlsplit(handler.path).path != tree:
            return error(handler, 404, "unknown route")
        reply(handler, 200, json.dumps([entry("b.txt")]).encode(), {"Content-Type": "application/json"})

    elsewhere = Server(elsewhere_app)

    def hub_app(handler):
        if handler.headers.get("Authorization") != f"Bearer {HF_TOKEN}":
            return error(handler, 401, "Invalid credentials in Authorization header")
        url = urlsplit(handler.path)
        if url.path == tree:
            return reply(handler, 200, json.dumps([entry("a.txt")]).encode(),
                         {"Content-Type": "application/json",
                          "Link": f'<{elsewhere.url}{tree}?recursive=true&cursor=2>; rel="next"'})
        name = url.path.removeprefix("/datasets/owner/set/resolve/main/")
        if name not in files:
            return error(handler, 404, "Entry not found")
        send_file(handler, files[name])

    hub = Server(hub_app)
    try:
        # hf: the Hub only (a bare owner/name asks Kaggle's download API, DATASET_HOST, first).
        result = run([fluxtrain_bin, "--log-level", "debug", "fetch", "hf:owner/set", "--cache-dir", tmp_path / "cache"],
                     env=clean_env(tmp_path, HF_ENDPOINT=hub.url, HF_TOKEN=HF_TOKEN), timeout=120)
        root = Path(result.stdout.strip().splitlines()[-1])
        assert (root / "a.txt").read_bytes() == files["a.txt"] and (root / "b.txt").read_bytes() == files["b.txt"]
        assert [urlsplit(r["path"]).path for r in elsewhere.requests] == [tree]
        assert authorizations(elsewhere) == [None], elsewhere.requests
        assert len(hub.requests) == 3 and authorizations(hub) == [f"Bearer {HF_TOKEN}"] * 3
        assert HF_TOKEN not in result.stdout + result.stderr
    finally:
        hub.close()
        elsewhere.close()


# --- the user info of a URL: sent to its own origin only ---

def test_url_user_info_is_not_sent_across_a_redirect(fluxtrain_bin, tmp_path):
    data = b"just one file\n"
    storage = Server(lambda handler: send_file(handler, data))
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def host_app(handler):
        if handler.headers.get("Authorization") != expected:
            return error(handler, 401, "Unauthenticated")
        reply(handler, 302, b"", {"Location": f"{storage.url}/blob/notes.txt?X-Amz-Signature={SIGNATURE}"})

    host = Server(host_app)
    try:
        port = host.url.rsplit(":", 1)[1]
        url = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/notes.txt"
        result = run([fluxtrain_bin, "--log-level", "debug", "fetch", url, "--cache-dir", tmp_path / "cache"],
                     env=clean_env(tmp_path), timeout=120)
        assert authorizations(host) == [expected]
        assert storage.requests and authorizations(storage) == [None] * len(storage.requests)
        output = result.stdout + result.stderr
        assert PASSWORD not in output and SIGNATURE not in output, output
        assert f"http://***@127.0.0.1:{port}/notes.txt" in output
    finally:
        host.close()
        storage.close()


# --- a training run on a URL with a user:password and a presigned query ---

def tar_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname="set/" + path.relative_to(folder).as_posix(), recursive=False)
    return buffer.getvalue()


def leaks(folders, needles) -> list[str]:
    """Every file under `folders` (binary ones too) that holds one of `needles`, with the needle."""
    found = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                found += [f"{path}: {needle!r}" for needle in needles if needle in data]
    return found


def test_training_on_a_url_with_credentials_and_a_signature_leaks_neither(fluxtrain_bin, tmp_path, models, dataset):
    archive = tar_of(dataset)
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def app(handler):
        url = urlsplit(handler.path)
        if handler.headers.get("Authorization") != expected:
            return error(handler, 401, "Unauthenticated")
        if url.path != "/set.tar" or not parse_qs(url.query).get("X-Amz-Signature", [""])[0].startswith("s3cr3t"):
            return error(handler, 403, "SignatureDoesNotMatch")
        send_file(handler, archive)

    host = Server(app)
    try:
        port = host.url.rsplit(":", 1)[1]
        out = tmp_path / "out" / "run"
        datasets = tmp_path / "datasets"

        def train(signature, steps):
            env = clean_env(tmp_path, FLUXTRAIN_DATASET_CACHE=str(datasets))
            env.update(base_env(models, dataset, out, PARAMS_MAX_TRAIN_STEPS=steps, PARAMS_SAMPLE_EVERY_N_STEPS=0))
            env = {k: v for k, v in env.items() if not k.lower().endswith("_proxy")}
            env["NO_PROXY"] = "127.0.0.1,localhost"
            env["DATASET_NAME"] = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/set.tar?X-Amz-Signature={signature}"
            return run([fluxtrain_bin, "--log-level", "debug", "train"], env=env, timeout=600)

        first = train(SIGNATURE, 4)
        assert authorizations(host) == [expected], host.requests
        assert (out / "config.toml").exists() and list(out.glob("*.safetensors")), sorted(out.rglob("*"))
        needles = [PASSWORD.encode(), SIGNATURE.encode(), b"s3cr3t", f"{USER}:{PASSWORD[:2]}".encode()]
        assert leaks([out, datasets, tmp_path / "out"], needles) == []
        output = (first.stdout + first.stderr).encode()
        assert [n for n in needles if n in output] == [], first.stdout + first.stderr
        # What is recorded and shown is the redacted form (config.toml; the state's options; the output).
        redacted = f"http://***@127.0.0.1:{port}/set.tar?X-Amz-Signature=***"
        assert redacted in (out / "config.toml").read_text()
        assert redacted in first.stdout + first.stderr
        states = sorted(out.glob("state/step-*/state.json"))
        assert states and json.loads(states[-1].read_text())["run"]["options"]["dataset_name"] == redacted

        # The URL signed again (a pod restart renews a presigned URL): the same dataset cache entry (no new
        # download) and the same run (resumed, no run-<hash> folder); still nothing leaks.
        again = train("s3cr3t-renewed-9Jw4", 6)
        assert len(host.requests) == 1, host.requests
        assert not list(out.glob("run-*")), sorted(p.name for p in out.iterdir())
        assert "resuming from" in again.stdout + again.stderr
        assert leaks([out, datasets], needles + [b"renewed-9Jw4"]) == []
        assert b"renewed-9Jw4" not in (again.stdout + again.stderr).encode()
    finally:
        host.close()
