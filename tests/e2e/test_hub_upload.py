"""Results leave the pod (issue 22 item 5): HF_UPLOAD_REPO pushes the final LoRA, the grid, the last samples and
a model card to a Hub through its commit API (tests/fake_hub.py, itself checked against the real
huggingface_hub client), resumably after a dropped connection; NOTIFY_WEBHOOK_URL gets start / checkpoint /
finish bodies and a failing webhook does not stop the training; neither secret reaches a log; a bad token is
refused at the start. With upload_states a run's states go up too, and a fresh OUTPUT_PATH continues from the
Hub's newest state to the straight run's LoRA, byte for byte."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import run
from fake_http import Server, reply
from fake_hub import FakeHub
from train_env import base_env, dataset, models  # noqa: F401 (fixtures)

TOKEN = "hf_fake_write_token_0123456789"
HOOK_SECRET = "Zq8secretWebhookPathToken42"


@pytest.fixture
def hub():
    h = FakeHub(token=TOKEN, multipart_above=48 * 1024, chunk_size=32 * 1024)
    yield h
    h.close()


class Webhook:
    """Records the JSON bodies POSTed to it; answers `status`."""

    def __init__(self, status: int = 204):
        self.status = status
        self.bodies: list[dict] = []

        def app(handler):
            length = int(handler.headers.get("Content-Length") or 0)
            self.bodies.append(json.loads(handler.rfile.read(length)))
            reply(handler, self.status)

        self.server = Server(app)
        self.url = f"{self.server.url}/hooks/{HOOK_SECRET}"


def publish_env(models, dataset, output, hub, **params):
    env = base_env(models, dataset, output, HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN,
                   HF_UPLOAD_REPO="tester/flux-lora-test", FLUXTRAIN_HTTP_RETRIES=0,
                   FLUXTRAIN_HTTP_BACKOFF_SECONDS=0)
    env.update({k: str(v) for k, v in params.items()})
    return env


def assert_no_secrets(output, *texts):
    logs = [p.read_text(errors="replace") for p in output.rglob("*.log")]
    for text in list(texts) + logs:
        assert TOKEN not in text
        assert HOOK_SECRET not in text


def test_the_fake_hub_speaks_huggingface_hubs_protocol(tmp_path, hub):
    """The real client (LFS basic and multipart, regular files, listing, download) against the fake Hub."""
    pytest.importorskip("huggingface_hub")
    script = textwrap.dedent(f"""
        import os
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi(endpoint={hub.url!r}, token={TOKEN!r})
        api.create_repo("tester/demo", private=True)
        api.create_repo("tester/demo", exist_ok=True)
        big = os.urandom(100 * 1024)
        small = os.urandom(20 * 1024)
        api.upload_file(path_or_fileobj=big, path_in_repo="big.safetensors", repo_id="tester/demo")
        api.upload_file(path_or_fileobj=small, path_in_repo="sub/small.bin", repo_id="tester/demo")
        api.upload_file(path_or_fileobj=b"# card\\n", path_in_repo="README.md", repo_id="tester/demo")
        assert sorted(api.list_repo_files("tester/demo")) == ["README.md", "big.safetensors", "sub/small.bin"]
        got = hf_hub_download("tester/demo", "big.safetensors", cache_dir={str(tmp_path / 'cache')!r},
                              endpoint={hub.url!r}, token={TOKEN!r})
        assert open(got, "rb").read() == big
        print("ok")
    """)
    env = {"HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0",
           "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
    assert hub.count("lfs-part") == 4  # 100 KiB in 32 KiB parts: the multipart path
    assert hub.count("lfs-put") == 2 and hub.count("commit") == 3
    assert hub.files("tester/demo")["README.md"] == b"# card\n"  # a regular (git) file


def test_train_pushes_lora_grid_samples_and_card_and_notifies(tmp_path, fluxtrain_bin, models, dataset, hub):
    out = tmp_path / "run"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ohwx, a red square --w 64 --h 64 --s 2\n")
    hook = Webhook()
    # A connection dropped halfway through an upload, then two through the commit (libcurl itself sends a
    # request again once when a reused connection turns out dead): each try asks the batch endpoint again
    # and sends only what the Hub does not have.
    hub.drop = {"lfs-put": 1, "commit": 2}
    env = publish_env(models, dataset, out, hub, NOTIFY_WEBHOOK_URL=hook.url, SAMPLE_PROMPTS=prompts,
                      PARAMS_SAMPLE_EVERY_N_STEPS=4)
    result = run([fluxtrain_bin, "train"], env=env)
    repo = "tester/flux-lora-test"
    assert repo in hub.repos and hub.repos[repo]["private"]
    files = hub.files(repo)
    lora = (out / "flux-lora.safetensors").read_bytes()
    assert files["flux-lora.safetensors"] == lora
    # The newest sample grid and loss plot the run drew (src/report), the final ones.
    assert sorted(p for p in files if p.startswith("grids/")) == ["grids/loss-00000008.png", "grids/samples-00000008.png"]
    assert files["grids/samples-00000008.png"] == (out / "grids" / "samples-00000008.png").read_bytes()
    samples = [p for p in files if p.startswith("samples/") and p.endswith(".png")]
    assert samples, sorted(files)
    card = files["README.md"].decode()
    assert "base_model: \"black-forest-labs/FLUX.1-dev\"" in card
    assert "instance_prompt: \"ohwx\"" in card and "Use `ohwx`" in card
    assert f"url: \"{samples[0]}\"" in card and "ohwx, a red square" in card
    assert "| rank (network_dim) | 4 |" in card, card
    import hashlib
    oid = hashlib.sha256(lora).hexdigest()
    assert hub.count("dropped", "lfs-put") == 1 and hub.count("dropped", "commit") == 2
    assert hub.count("lfs-put", oid) == 1, hub.events  # after the dropped PUT; not again after the dropped commit
    assert sum(oid in d for k, d in hub.events if k == "batch") >= 3
    assert hub.count("commit", repo) == 1
    # The webhook: start, a checkpoint per saved LoRA, finish, in order.
    events = [b["event"] for b in hook.bodies]
    assert events[0] == "start" and events[-1] == "finish" and "checkpoint" in events, events
    assert "failure" not in events
    finish = hook.bodies[-1]
    assert finish["step"] == 8 and finish["files"] == ["flux-lora.safetensors"] and finish["run"] == "flux-lora"
    assert "text" in finish and "content" in finish
    assert "uploaded the LoRA flux-lora.safetensors and its model card" in result.stderr
    assert not (out / ".hub-upload").exists()
    assert_no_secrets(out, result.stdout, result.stderr)


def test_a_failing_webhook_and_hub_do_not_stop_the_training(tmp_path, fluxtrain_bin, models, dataset, hub):
    out = tmp_path / "run"
    hook = Webhook(status=500)
    env = publish_env(models, dataset, out, hub, NOTIFY_WEBHOOK_URL=hook.url, PARAMS_UPLOAD_CHECKPOINTS="true")
    hub.drop = {"commit": 1000}  # the Hub accepts the repository, then never a commit
    result = run([fluxtrain_bin, "train"], env=env)
    assert (out / "flux-lora.safetensors").exists()
    assert len(hook.bodies) >= 3  # every event was tried (and retried)
    assert "the webhook's start notification (to 127.0.0.1)" in result.stderr
    assert "given up (the training goes on)" in result.stderr
    assert not hub.files("tester/flux-lora-test")
    assert_no_secrets(out, result.stdout, result.stderr)


def test_the_ema_files_go_where_the_lora_files_go(tmp_path, fluxtrain_bin, models, dataset, hub):
    """ema_decay: each LoRA file's -ema file is uploaded with it (upload_checkpoints), named by the webhook's
    checkpoint and finish bodies, listed by the model card and in the run's "files written" lines."""
    out = tmp_path / "run"
    hook = Webhook()
    env = publish_env(models, dataset, out, hub, NOTIFY_WEBHOOK_URL=hook.url, PARAMS_UPLOAD_CHECKPOINTS="true",
                      PARAMS_EMA_DECAY=0.9, PARAMS_MAX_TRAIN_STEPS=4)
    result = run([fluxtrain_bin, "train"], env=env)
    pairs = [("flux-lora-step00000002.safetensors", "flux-lora-step00000002-ema.safetensors"),
             ("flux-lora.safetensors", "flux-lora-ema.safetensors")]
    files = hub.files("tester/flux-lora-test")
    for lora, ema in pairs:
        assert files[lora] == (out / lora).read_bytes() and files[ema] == (out / ema).read_bytes(), sorted(files)
    checkpoints = [b for b in hook.bodies if b["event"] == "checkpoint"]
    assert [b["files"] for b in checkpoints] == [list(pairs[0])], hook.bodies
    assert hook.bodies[-1]["event"] == "finish" and hook.bodies[-1]["files"] == list(pairs[1])
    assert "[`flux-lora-ema.safetensors`](./flux-lora-ema.safetensors)" in files["README.md"].decode()
    written = [line.rsplit("/", 1)[-1] for line in result.stdout.splitlines() if line.endswith(".safetensors")]
    assert written == [name for pair in pairs for name in pair], result.stdout


def test_a_hub_down_at_the_start_is_a_warning_and_the_training_goes_on(tmp_path, fluxtrain_bin, models, dataset, hub):
    hub.down = True
    out = tmp_path / "run"
    result = run([fluxtrain_bin, "train"], env=publish_env(models, dataset, out, hub))
    assert "the Hub cannot be asked now" in result.stderr and "HTTP 503" in result.stderr
    assert (out / "flux-lora.safetensors").exists()
    assert "given up (the training goes on)" in result.stderr
    assert_no_secrets(out, result.stdout, result.stderr)


@pytest.mark.parametrize("change, needle", [
    ({"HF_TOKEN": "hf_wrong_token_abcdefgh"}, "HF_TOKEN"),
    ({"HF_TOKEN": ""}, "HF_TOKEN is not set"),
    ({"HF_UPLOAD_REPO": "not a repo"}, "HF_UPLOAD_REPO"),
    ({"NOTIFY_WEBHOOK_URL": "ftp://example.com/x"}, "NOTIFY_WEBHOOK_URL"),
])
def test_bad_settings_are_refused_at_the_start(tmp_path, fluxtrain_bin, models, dataset, hub, change, needle):
    out = tmp_path / "run"
    env = publish_env(models, dataset, out, hub)
    env.update(change)
    result = run([fluxtrain_bin, "train"], env=env, check=False)
    assert result.returncode != 0, result.stderr
    assert needle in result.stderr
    assert not (out / "metrics.jsonl").exists()
    assert "hf_wrong_token_abcdefgh" not in result.stderr


def test_read_only_token_is_refused_at_the_start(tmp_path, fluxtrain_bin, models, dataset, hub):
    hub.role = "read"
    result = run([fluxtrain_bin, "train"], env=publish_env(models, dataset, tmp_path / "run", hub), check=False)
    assert result.returncode != 0 and "read-only token" in result.stderr, result.stderr


def test_a_fresh_pod_continues_from_the_hubs_newest_state(tmp_path, fluxtrain_bin, models, dataset, hub):
    """Spot preemption: the first pod is stopped (SIGTERM) after a step, its state goes up before it exits;
    a second pod with an empty OUTPUT_PATH (and its own cache) pulls it and ends with the straight run's LoRA."""
    straight = tmp_path / "straight"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, straight))
    first = tmp_path / "pod1" / "out"
    env = publish_env(models, dataset, first, hub, PARAMS_UPLOAD_STATES="true", PARAMS_SAVE_EVERY_N_STEPS=1000)
    proc = subprocess.Popen([fluxtrain_bin, "train"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = first / "metrics.jsonl"
    deadline = time.time() + 300
    while (not metrics.exists() or metrics.stat().st_size == 0) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert not (first / "flux-lora.safetensors").exists(), "the run finished before the signal could stop it"
    states = [p.split("/")[1] for p in hub.files("tester/flux-lora-test") if p.endswith("/COMPLETE")]
    assert len(states) == 1, stderr
    step = int(states[0].split("-")[1])

    second = tmp_path / "pod2" / "out"
    env2 = publish_env(models, dataset, second, hub, PARAMS_UPLOAD_STATES="true", PARAMS_SAVE_EVERY_N_STEPS=1000,
                       PARAMS_CACHE_DIR=tmp_path / "pod2" / "cache", PARAMS_KEEP_LAST_N_STATES=1)
    result = run([fluxtrain_bin, "train"], env=env2)
    assert f"pulled tester/flux-lora-test/state/{states[0]}" in result.stderr, result.stderr
    assert f"at step {step} of 8" in result.stderr
    assert (second / "flux-lora.safetensors").read_bytes() == (straight / "flux-lora.safetensors").read_bytes()
    # The Hub keeps the newest keep_last_n_states (here 1): the first pod's state went with the final one.
    hub_states = {p.split("/")[1] for p in hub.files("tester/flux-lora-test") if p.startswith("state/")}
    assert hub_states == {"step-00000008"}
    assert "flux-lora.safetensors" in hub.files("tester/flux-lora-test")
    assert_no_secrets(second, result.stdout, result.stderr, stderr)


@pytest.mark.parametrize("url, keys", [
    (f"http://discord.com/api/webhooks/1/{HOOK_SECRET}", {"content", "username"}),
    (f"http://discordapp.com/api/webhooks/1/{HOOK_SECRET}", {"content", "username"}),
    (f"http://hooks.slack.com/services/T0/B0/{HOOK_SECRET}", {"text"}),
])
def test_discord_and_slack_get_their_own_bodies(tmp_path, fluxtrain_bin, models, dataset, url, keys):
    """The real services' host names, reached through an HTTP proxy on 127.0.0.1 (libcurl's http_proxy): the
    request arrives with the service's whole URL, and the body is the one that service takes."""
    hook = Webhook()
    out = tmp_path / "run"
    env = base_env(models, dataset, out, NOTIFY_WEBHOOK_URL=url, PARAMS_MAX_TRAIN_STEPS=2, FLUXTRAIN_HTTP_RETRIES=0,
                   http_proxy=hook.server.url, no_proxy="")
    result = run([fluxtrain_bin, "train"], env=env)
    assert len(hook.bodies) >= 2, result.stderr
    assert all(set(body) == keys for body in hook.bodies), hook.bodies
    texts = [body.get("content") or body.get("text") for body in hook.bodies]
    assert "started, 2 steps" in texts[0] and "finished, 2 steps" in texts[-1], texts
    assert {r["path"] for r in hook.server.requests} == {url}
    assert_no_secrets(out, result.stdout, result.stderr)
