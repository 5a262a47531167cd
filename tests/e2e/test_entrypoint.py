"""The container's entrypoint (docker/entrypoint.sh) run as the image runs it, without Docker: configured by
environment variables only, with the model files on a fake Hugging Face Hub and the dataset as an archive,
both served from 127.0.0.1. The entrypoint downloads the tiny model set into MODEL_DIR, fetches the
dataset, trains and writes the LoRA; a second start downloads nothing and finds the run complete. Also
`fluxtrain fetch-models` itself: the gated repository, a bad checksum, fp8 variants, a resumed part file."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from PIL import Image
from safetensors import safe_open

from conftest import ROOT, run
from fake_http import Server, error, reply, send_file

ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
TOKEN = "hf_podSECRETtoken0123456789"
BFL = "black-forest-labs/FLUX.1-dev"
ENCODERS = "comfyanonymous/flux_text_encoders"


def trickle(handler, data: bytes):
    """200 with the data in 512-byte pieces, one every 0.1 s (a download slow enough to interrupt)."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    try:
        for start in range(0, len(data), 512):
            handler.wfile.write(data[start:start + 512])
            handler.wfile.flush()
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        pass


class Hub:
    """Model repositories as the Hub serves them: the tree API (one folder, not recursive, with LFS sha256)
    and resolve URLs with Range support. BFL's repository is gated: no token 401, another token 403."""

    def __init__(self, repos: dict[str, dict[str, bytes]], gated: set[str]):
        self.repos = repos
        self.gated = gated
        self.wrong_hash: set[tuple[str, str]] = set()
        self.slow: set[tuple[str, str]] = set()  # (repo, path) sent at about 5 KB/s unless resumed
        self.files: dict[str, bytes] = {}  # /files/<name>: plain downloads (the dataset archive)
        self.server = Server(self.app)

    def app(self, handler):
        url = urlsplit(handler.path)
        parts = [unquote(p) for p in url.path.split("/")]
        if url.path.startswith("/files/"):
            if parts[2] not in self.files:
                return error(handler, 404, "no such file")
            return send_file(handler, self.files[parts[2]])
        if url.path.startswith("/api/models/") and len(parts) >= 7 and parts[5] == "tree":
            repo, kind, rest = f"{parts[3]}/{parts[4]}", "tree", "/".join(parts[7:])
        elif len(parts) >= 6 and parts[3] == "resolve":
            repo, kind, rest = f"{parts[1]}/{parts[2]}", "resolve", "/".join(parts[5:])
        else:
            return error(handler, 404, "unknown route")
        if repo not in self.repos:
            return reply(handler, 401, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"})
        if repo in self.gated:
            auth = handler.headers.get("Authorization")
            if auth is None:
                return reply(handler, 401, b'{"error":"Access to this model is restricted."}',
                             {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this model is restricted."})
            if auth != f"Bearer {TOKEN}":
                return error(handler, 403, "Access to this model is restricted and you are not in the authorized list.")
        files = self.repos[repo]
        if kind == "tree":
            assert parse_qs(url.query).get("recursive") == ["false"], url.query
            prefix = rest + "/" if rest else ""
            entries = []
            for path, data in sorted(files.items()):
                if not path.startswith(prefix) or "/" in path[len(prefix):]:
                    continue
                sha = hashlib.sha256(data + (b"x" if (repo, path) in self.wrong_hash else b"")).hexdigest()
                entries.append({"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data),
                                "path": path, "lfs": {"oid": sha, "size": len(data), "pointerSize": 134}})
            return reply(handler, 200, json.dumps(entries).encode(), {"Content-Type": "application/json"})
        if rest not in files:
            return error(handler, 404, "Entry not found")
        if (repo, rest) in self.slow and not handler.headers.get("Range"):
            return trickle(handler, files[rest])
        return send_file(handler, files[rest])

    def resolved(self) -> list[str]:
        return [r["path"] for r in self.server.requests if "/resolve/" in r["path"]]

    def api_requests(self) -> list[dict]:
        return [r for r in self.server.requests if not r["path"].startswith("/files/")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, fluxtrain_bin) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("tiny")
    run([fluxtrain_bin, "make-tiny", "--out", folder, "--seed", "5"])
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def dataset_archive() -> bytes:
    """Six small captioned images in kohya's `N_name` folder, as a tar.gz."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for i in range(6):
            w, h = (64, 64) if i % 2 == 0 else (96, 64)
            image = Image.new("RGB", (w, h), (40 * i, 200 - 30 * i, 90))
            png = io.BytesIO()
            image.save(png, format="PNG")
            for name, data in ((f"set/2_ohwx/img{i}.png", png.getvalue()),
                               (f"set/2_ohwx/img{i}.txt", f"ohwx, a square number {i}\n".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def hub(tiny):
    t5_fp8 = tiny["t5xxl_fp16.safetensors"][::-1]  # any other bytes: a distinct fp8 file to tell apart
    hub = Hub({BFL: {"flux1-dev.safetensors": tiny["flux1-dev.safetensors"], "ae.safetensors": tiny["ae.safetensors"],
                     "README.md": b"# FLUX.1 [dev]\n"},
               ENCODERS: {"clip_l.safetensors": tiny["clip_l.safetensors"],
                          "t5xxl_fp16.safetensors": tiny["t5xxl_fp16.safetensors"],
                          "t5xxl_fp8_e4m3fn.safetensors": t5_fp8},
               "me/custom": {"weights/my-clip.safetensors": tiny["clip_l.safetensors"]}},
              gated={BFL})
    hub.files["set.tar.gz"] = dataset_archive()
    yield hub
    hub.server.close()


def pod_env(tmp_path: Path, hub: Hub, fluxtrain_bin: str, **extra) -> dict[str, str]:
    """What a pod template sets, plus where this test keeps its caches."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PARAMS_", "MODEL_", "HF_", "DATASET_", "FLUXTRAIN_"))}
    env.update({
        "FLUXTRAIN": fluxtrain_bin,
        "HF_ENDPOINT": hub.server.url,
        "HF_TOKEN": TOKEN,
        "MODEL_DIR": str(tmp_path / "volume" / "models"),
        "OUTPUT_PATH": str(tmp_path / "volume" / "output"),
        "DATASET_NAME": f"{hub.server.url}/files/set.tar.gz",
        "DATASET_PATH": str(tmp_path / "volume" / "dataset"),  # the seed's name for it
        "FLUXTRAIN_HTTP_RETRIES": "0",
        "BASE_MODEL": "flux-dev",
        "SOURCE_DATE_EPOCH": "1700000000",
        "PARAMS_DEVICE": "cpu",
        "PARAMS_RESOLUTION": "64",
        "PARAMS_NETWORK_DIM": "4",
        "PARAMS_NETWORK_ALPHA": "4",
        "PARAMS_OPTIMIZER_TYPE": "AdamW",
        "PARAMS_LEARNING_RATE": "0.001",
        "PARAMS_MAX_TRAIN_STEPS": "4",
        "PARAMS_SAVE_EVERY_N_STEPS": "2",
        "PARAMS_SEED": "7",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start(env: dict[str, str]) -> subprocess.CompletedProcess:
    return run(["bash", ENTRYPOINT], env=env, check=False)


def test_pod_downloads_the_models_trains_and_a_restart_downloads_nothing(tmp_path, fluxtrain_bin, hub, tiny):
    env = pod_env(tmp_path, hub, fluxtrain_bin)
    first = start(env)
    assert first.returncode == 0, first.stdout + first.stderr
    models, out = Path(env["MODEL_DIR"]), Path(env["OUTPUT_PATH"])
    for name in ("flux1-dev.safetensors", "ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"):
        assert (models / name).read_bytes() == tiny[name], name
    assert sorted(p.name for p in models.iterdir()) == sorted(
        ["flux1-dev.safetensors", "ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"])
    # The token goes to the Hub, and never into the output.
    assert all(r["headers"].get("Authorization") == f"Bearer {TOKEN}" for r in hub.api_requests())
    assert TOKEN not in first.stdout + first.stderr
    lora = out / "flux-lora.safetensors"
    with safe_open(str(lora), "pt") as f:
        assert f.metadata()["modelspec.trigger_phrase"] == "ohwx"
        assert any(k.endswith(".lora_down.weight") for k in f.keys())
    # Everything is on stdout (the pod's log view) and in OUTPUT_PATH/logs/pod.log.
    log = (out / "logs" / "pod.log").read_text()
    for text in ("checking the settings", "downloading 4 model files", "sha256 checked", "training",
                 "fluxtrain train exited with status 0", str(lora)):
        assert text in first.stdout, text
        assert text in log, text
    assert "lr_scheduler" in (out / "logs" / "settings.txt").read_text()

    # A restarted pod: no model request at all, and the finished run is not trained again.
    requests_before = len(hub.api_requests())
    lora_bytes = lora.read_bytes()
    second = start(env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert len(hub.api_requests()) == requests_before
    assert f"{models / 't5xxl_fp16.safetensors'} is present" in second.stdout
    assert "at step 4 of 4" in second.stdout and "resumed from" in second.stdout
    assert lora.read_bytes() == lora_bytes
    assert log in (out / "logs" / "pod.log").read_text(), "the log of the first start was not kept"


def test_a_bad_setting_fails_before_any_download(tmp_path, fluxtrain_bin, hub):
    env = pod_env(tmp_path, hub, fluxtrain_bin, PARAMS_LEARNING_RATE="fast")
    result = start(env)
    assert result.returncode == 1
    assert 'PARAMS_LEARNING_RATE="fast"' in result.stdout
    assert hub.server.requests == []
    assert list(Path(env["MODEL_DIR"]).iterdir()) == []
    assert 'PARAMS_LEARNING_RATE="fast"' in (Path(env["OUTPUT_PATH"]) / "logs" / "pod.log").read_text()


def test_the_gated_model_without_a_token_says_what_to_do(tmp_path, fluxtrain_bin, hub):
    env = pod_env(tmp_path, hub, fluxtrain_bin)
    del env["HF_TOKEN"]
    result = start(env)
    assert result.returncode == 1
    assert "accept its licence on the model page" in result.stdout and "set HF_TOKEN" in result.stdout
    assert f"{hub.server.url}/{BFL}" in result.stdout
    assert not (Path(env["OUTPUT_PATH"]) / "flux-lora.safetensors").exists()
    # A token without access (licence not accepted): 403, the same advice.
    env["HF_TOKEN"] = "hf_other"
    result = start(env)
    assert result.returncode == 1 and "HTTP 403" in result.stdout and "accept its licence" in result.stdout
    assert "hf_other" not in result.stdout


def test_a_bad_checksum_is_an_error_and_leaves_no_file(tmp_path, fluxtrain_bin, hub):
    hub.wrong_hash.add((ENCODERS, "t5xxl_fp16.safetensors"))
    env = pod_env(tmp_path, hub, fluxtrain_bin)
    result = start(env)
    assert result.returncode == 1
    assert "sha256" in result.stdout and "t5xxl_fp16.safetensors" in result.stdout
    models = Path(env["MODEL_DIR"])
    assert not (models / "t5xxl_fp16.safetensors").exists()
    assert not (models / "t5xxl_fp16.safetensors.part").exists()
    assert not (Path(env["OUTPUT_PATH"]) / "flux-lora.safetensors").exists()


def test_sigterm_to_the_pod_saves_a_state_and_a_restart_resumes(tmp_path, fluxtrain_bin, hub):
    env = pod_env(tmp_path, hub, fluxtrain_bin, PARAMS_MAX_TRAIN_STEPS=400, PARAMS_SAVE_EVERY_N_STEPS=1000)
    proc = subprocess.Popen(["bash", ENTRYPOINT], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = Path(env["OUTPUT_PATH"]) / "metrics.jsonl"
    deadline = time.time() + 300
    while (not metrics.exists() or metrics.stat().st_size == 0) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "received SIGTERM" in output
    states = [p for p in (Path(env["OUTPUT_PATH"]) / "state").iterdir() if (p / "COMPLETE").exists()]
    assert len(states) == 1, output
    env["PARAMS_MAX_TRAIN_STEPS"] = str(int(states[0].name.split("-")[1]) + 2)
    again = start(env)
    assert again.returncode == 0, again.stdout
    assert "resumed from" in again.stdout


FAKE_FLUXTRAIN = """#!/usr/bin/env bash
# A stand-in for fluxtrain: the command named by FAKE_BLOCK_IN waits (noting its start) until SIGTERM or
# SIGINT, notes the signal and exits with FAKE_STATUS; every other command succeeds at once.
case "$1" in --version) echo 0.0-fake; exit 0 ;; esac
echo "$1" >>"$FAKE_LOG"
if [ "$1" = "$FAKE_BLOCK_IN" ]; then
  command=$1
  got() { echo "$command got $1" >>"$FAKE_LOG"; exit "$FAKE_STATUS"; }
  trap 'got TERM' TERM
  trap 'got INT' INT
  echo "$1 waiting" >>"$FAKE_LOG"
  while true; do sleep 0.05; done
fi
exit 0
"""


@pytest.mark.parametrize("phase,status", [("config", 0), ("fetch-models", 0), ("train", 0), ("train", 3)])
def test_a_sigterm_to_the_entrypoint_reaches_the_running_command(tmp_path, hub, phase, status):
    """From its first line on, the entrypoint passes SIGTERM to the fluxtrain command that runs (the settings
    check, the model download, the training) and exits with that command's status; a stop before the
    training ends the start there (exit 0 for a clean stop)."""
    fake = tmp_path / "fluxtrain"
    fake.write_text(FAKE_FLUXTRAIN)
    fake.chmod(0o755)
    log = tmp_path / "fake.log"
    env = pod_env(tmp_path, hub, str(fake), FAKE_LOG=log, FAKE_BLOCK_IN=phase, FAKE_STATUS=status)
    proc = subprocess.Popen(["bash", ENTRYPOINT], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (log.exists() and f"{phase} waiting" in log.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert f"{phase} got TERM" in log.read_text(), output
    assert proc.returncode == status, output
    assert "received SIGTERM" in output
    ran = [line for line in log.read_text().splitlines() if " " not in line]
    order = ["config", "fetch-models", "train"]
    assert ran == order[:order.index(phase) + 1], "no command may start after the stop"
    if phase == "train":
        assert f"fluxtrain train exited with status {status}" in output
    else:
        assert "stopped on SIGTERM before the training; a restart carries on" in output


def test_a_stopped_model_download_keeps_its_part_file_and_the_next_start_completes_it(tmp_path, fluxtrain_bin,
                                                                                        hub, tiny):
    """The real fetch-models, stopped through the entrypoint while the transformer trickles in: exit 0 within
    the grace period, the part file stays, and the next start asks for the rest only."""
    hub.slow.add((BFL, "flux1-dev.safetensors"))
    env = pod_env(tmp_path, hub, fluxtrain_bin)
    part = Path(env["MODEL_DIR"]) / "flux1-dev.safetensors.part"
    proc = subprocess.Popen(["bash", ENTRYPOINT], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (part.exists() and part.stat().st_size >= 2048):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert time.time() - sent < 15, "the stop took longer than stop_grace_seconds (5) + 10 s"
    assert "stopped during download on SIGTERM" in output and "a restart carries on" in output
    kept = part.stat().st_size
    assert 0 < kept < len(tiny["flux1-dev.safetensors"])
    assert not (Path(env["MODEL_DIR"]) / "flux1-dev.safetensors").exists()
    hub.slow.clear()
    before = len(hub.server.requests)
    fetch_models(env)
    ranges = [r["headers"].get("Range") for r in hub.server.requests[before:] if r["path"].endswith("/flux1-dev.safetensors")]
    assert ranges == [f"bytes={kept}-"], ranges
    assert (Path(env["MODEL_DIR"]) / "flux1-dev.safetensors").read_bytes() == tiny["flux1-dev.safetensors"]


def fetch_models(env, *args, check=True):
    return run([env["FLUXTRAIN"], "fetch-models", *args], env=env, check=check)


def test_fetch_models_variants_overrides_and_resume(tmp_path, fluxtrain_bin, hub, tiny):
    env = pod_env(tmp_path, hub, fluxtrain_bin, MODEL_T5XXL_VARIANT="fp8", MODEL_SOURCE_CLIP_L="me/custom/weights/my-clip.safetensors")
    models = Path(env["MODEL_DIR"])
    models.mkdir(parents=True)
    # Half of the transformer from an earlier, interrupted start: only the rest is asked for.
    half = len(tiny["flux1-dev.safetensors"]) // 2
    (models / "flux1-dev.safetensors.part").write_bytes(tiny["flux1-dev.safetensors"][:half])
    result = fetch_models(env)
    assert result.stdout.strip().splitlines()[-1] == str(models)
    assert (models / "t5xxl_fp8_e4m3fn.safetensors").read_bytes() == hub.repos[ENCODERS]["t5xxl_fp8_e4m3fn.safetensors"]
    assert not (models / "t5xxl_fp16.safetensors").exists()
    assert (models / "clip_l.safetensors").read_bytes() == tiny["clip_l.safetensors"]
    assert (models / "flux1-dev.safetensors").read_bytes() == tiny["flux1-dev.safetensors"]
    ranges = [r["headers"].get("Range") for r in hub.server.requests if r["path"].endswith("/flux1-dev.safetensors")]
    assert ranges == [f"bytes={half}-"]
    # fp8 T5 present: the fp16 default is satisfied by it, nothing is fetched; train accepts the folder.
    count = len(hub.server.requests)
    del env["MODEL_T5XXL_VARIANT"]
    fetch_models(env)
    assert len(hub.server.requests) == count
    # --verify hashes what is there against the Hub; a changed file is downloaded again.
    (models / "ae.safetensors").write_bytes(b"not the autoencoder")
    result = fetch_models(env, "--verify")
    assert "differs from" in result.stderr and (models / "ae.safetensors").read_bytes() == tiny["ae.safetensors"]
    # A file the repository does not have: named, with the variable that overrides it.
    env["MODEL_SOURCE_AE"] = f"{BFL}/vae.safetensors"
    (models / "ae.safetensors").unlink()
    result = fetch_models(env, check=False)
    assert result.returncode == 1
    assert "has no file 'vae.safetensors'" in result.stderr and "MODEL_SOURCE_AE" in result.stderr
    # A given file (PARAMS_AE) is not downloaded; a bad source is named before any request.
    count = len(hub.server.requests)
    result = fetch_models(env | {"PARAMS_AE": str(models / "flux1-dev.safetensors"), "MODEL_SOURCE_T5XXL": "nope"},
                          check=False)
    assert result.returncode == 1 and 'MODEL_SOURCE_T5XXL="nope"' in result.stderr
    assert len(hub.server.requests) == count
    result = fetch_models(env | {"PARAMS_AE": str(models / "flux1-dev.safetensors")})
    assert "not downloaded" in result.stderr and not (models / "ae.safetensors").exists()
    # No folder: named.
    result = fetch_models({k: v for k, v in env.items() if k != "MODEL_DIR"}, check=False)
    assert result.returncode == 1 and "MODEL_DIR" in result.stderr


def test_the_image_model_folder_is_the_seeds_models(tmp_path, hub):
    """Issue 19, item 0 (part): the images keep their model files in /models, as the seed's container does, so a
    volume mounted there with the seed's file names is used; an empty one falls back to /workspace/models."""
    for dockerfile in ("Dockerfile.cuda", "Dockerfile.rocm"):
        assert "FLUXTRAIN_IMAGE_MODELS=/models" in (ROOT / "docker" / dockerfile).read_text(), dockerfile
    fake = tmp_path / "fluxtrain"
    fake.write_text('#!/usr/bin/env bash\ncase "$1" in --version) echo 0.0-fake; exit 0 ;; esac\n'
                    'echo "$1 MODEL_DIR=$MODEL_DIR" >>"$FAKE_LOG"\n')
    fake.chmod(0o755)
    mounted = tmp_path / "models"
    mounted.mkdir()
    (mounted / "flux_dev.safetensors").write_bytes(b"")
    for folder, expected in ((mounted, mounted), (tmp_path / "empty", "/workspace/models")):
        folder.mkdir(exist_ok=True)
        log = tmp_path / f"{folder.name}.log"
        env = pod_env(tmp_path, hub, str(fake), FAKE_LOG=log, FLUXTRAIN_IMAGE_MODELS=folder)
        del env["MODEL_DIR"]
        result = start(env)
        assert result.returncode == 0, result.stdout
        assert f"train MODEL_DIR={expected}" in log.read_text().splitlines(), log.read_text()
