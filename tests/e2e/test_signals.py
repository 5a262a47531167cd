"""A stop signal in every phase (issue 18, item 2): SIGTERM while the dataset downloads (from a local server
that trickles the bytes), while the caches fill, while a model loads, while a sample renders, while training
and while a state is written. Each time fluxtrain exits 0 within stop_grace_seconds (with a generous bound
for a slow machine), says which phase it stopped and that a restart carries on, leaves nothing half-written
where a complete file is expected, and the restart carries on: the download from its part file, the cache
from the entries written, the training from the state, reaching the straight run's LoRA.

The phases that are too fast on the tiny models are held by the test hook FLUXTRAIN_TEST_PAUSE_IN=<phase>
(core/stop.h): the phase's first poll point waits there until the signal, which then takes the real path."""
from __future__ import annotations

import io
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import run
from fake_http import Server, send_file
from train_env import base_env, dataset, models  # noqa: F401 (fixtures)

GRACE = 5  # stop_grace_seconds' default
SLACK = 10  # for a slow, shared CI machine


class Running:
    """fluxtrain started in the background, its stderr read line by line as it comes."""

    def __init__(self, args, env):
        self.proc = subprocess.Popen([str(a) for a in args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self.stdout = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 300):
        deadline = time.time() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before '{text}':\n{self.stderr}"
            assert time.time() < deadline, f"no '{text}' in {timeout} s:\n{self.stderr}"
            time.sleep(0.02)

    def stop(self, sig=signal.SIGTERM) -> float:
        """Sends the signal; returns the seconds until the process exited."""
        sent = time.time()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=GRACE + SLACK + 60)  # stdout holds a few lines at most: no pipe fills
        took = time.time() - sent
        self._reader.join(timeout=10)
        self.stdout = self.proc.stdout.read()
        return took


def temporaries(*folders: Path) -> list[Path]:
    """What an interrupted atomic write, extraction or state save would leave behind."""
    found = []
    for folder in folders:
        if folder.exists():
            found += [p for p in folder.rglob("*") if ".tmp-" in p.name or ".extract-" in p.name]
    return found


@pytest.fixture(scope="module")
def straight(tmp_path_factory, fluxtrain_bin, models, dataset):  # noqa: F811
    out = tmp_path_factory.mktemp("straight") / "run"
    run([fluxtrain_bin, "train"], env=base_env(models, dataset, out))
    return out / "flux-lora.safetensors"


# --- before the training: the phases end with "stopped during <phase>" and exit 0 ---

def dataset_tar() -> bytes:
    """The six captioned images as an uncompressed tar (some 70 KB: long enough to trickle)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(6):
            image = Image.effect_noise((64, 64), 60 + i).convert("RGB")
            png = io.BytesIO()
            image.save(png, format="PNG")
            for name, data in ((f"set/2_ohwx/img{i}.png", png.getvalue()),
                               (f"set/2_ohwx/img{i}.txt", f"ohwx, noise number {i}\n".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_sigterm_during_the_download_keeps_the_part_file_and_a_restart_completes_it(tmp_path, fluxtrain_bin,
                                                                                      models):  # noqa: F811
    archive = dataset_tar()

    def app(handler):
        if handler.headers.get("Range"):
            return send_file(handler, archive)  # the restart: the rest at once
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(archive)))
        handler.end_headers()
        try:
            for start in range(0, len(archive), 512):  # about 5 KB/s: 14 s for the whole file
                handler.wfile.write(archive[start:start + 512])
                handler.wfile.flush()
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass

    server = Server(app)
    try:
        out = tmp_path / "run"
        env = base_env(models, "unused", out, PARAMS_MAX_TRAIN_STEPS=2, FLUXTRAIN_HTTP_RETRIES=0,
                       DATASET_NAME=f"{server.url}/set.tar", FLUXTRAIN_DATASET_CACHE=tmp_path / "datasets")
        proc = Running([fluxtrain_bin, "train"], env)
        proc.wait_for("fetching")
        deadline = time.time() + 60
        while not (parts := list((tmp_path / "datasets").rglob("*.part"))) or parts[0].stat().st_size < 2048:
            assert time.time() < deadline and proc.proc.poll() is None, proc.stderr
            time.sleep(0.05)
        took = proc.stop()
        assert proc.proc.returncode == 0, proc.stderr
        assert took < GRACE + SLACK, f"{took:.1f} s from SIGTERM to exit"
        assert "stopped during download on SIGTERM" in proc.stderr and "a restart carries on" in proc.stderr
        part = parts[0]
        kept = part.stat().st_size
        assert 0 < kept < len(archive), "the part file of the interrupted download must stay for the restart"
        assert not (part.parent / part.name.removesuffix(".part")).exists()
        assert not (out / "state").exists()

        # The restart asks for the rest only and trains.
        before = len(server.requests)
        again = run([fluxtrain_bin, "train"], env=env)
        ranges = [r["headers"].get("Range") for r in server.requests[before:]]
        assert ranges == [f"bytes={kept}-"], ranges
        assert f"resuming the dataset at {server.url}/set.tar after" in again.stderr, again.stderr
        assert (out / "flux-lora.safetensors").exists()
    finally:
        server.close()


@pytest.mark.parametrize("phase", ["cache filling", "model loading", "sampling"])
def test_sigterm_before_the_training_exits_0_and_leaves_nothing_half_written(tmp_path, fluxtrain_bin, models,  # noqa: F811
                                                                            dataset, phase):  # noqa: F811
    out = tmp_path / "run"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square --w 64 --h 64 --s 6\n")
    env = base_env(models, dataset, out, FLUXTRAIN_TEST_PAUSE_IN=phase, SAMPLE_PROMPTS=prompts,
                   PARAMS_SAMPLE_AT_FIRST="true")
    proc = Running([fluxtrain_bin, "train"], env)
    proc.wait_for(f"test hook: paused in {phase}")
    took = proc.stop()
    assert proc.proc.returncode == 0, proc.stderr
    assert took < GRACE + SLACK, f"{took:.1f} s from SIGTERM to exit"
    assert f"stopped during {phase} on SIGTERM" in proc.stderr, proc.stderr
    assert "a restart carries on" in proc.stderr
    assert not (out / "state").exists(), "no training step ran: no state"
    assert not list((out / "samples").glob("*.png"))
    assert temporaries(out, tmp_path / "cache") == []


def test_a_partly_filled_cache_stays_valid_and_the_restart_completes_it(tmp_path, fluxtrain_bin, models,  # noqa: F811
                                                                       dataset):  # noqa: F811
    out = tmp_path / "run"
    env = base_env(models, dataset, out)
    run([fluxtrain_bin, "cache"], env=env)
    latents = sorted((tmp_path / "cache" / "latents").iterdir())
    assert len(latents) == 6
    for entry in latents[3:]:
        entry.unlink()  # as if the first fill had been stopped after three entries
    kept = {p: p.read_bytes() for p in latents[:3]}
    proc = Running([fluxtrain_bin, "cache"], {**env, "FLUXTRAIN_TEST_PAUSE_IN": "cache filling"})
    proc.wait_for("test hook: paused in cache filling")
    assert proc.stop() < GRACE + SLACK
    assert proc.proc.returncode == 0, proc.stderr
    assert "stopped during cache filling" in proc.stderr
    assert {p: p.read_bytes() for p in latents[:3]} == kept
    assert temporaries(tmp_path / "cache") == []
    again = run([fluxtrain_bin, "cache"], env=env)
    assert "latent cache: 3 reused, 3 encoded" in again.stderr, again.stderr


# --- in the training: the step and a save in progress finish, a state is written, exit 0, the restart resumes ---

@pytest.mark.parametrize("phase,step", [("training", 1), ("saving", 2), ("sampling", 2)])
def test_sigterm_in_training_writes_a_state_and_the_restart_reaches_the_straight_lora(
        tmp_path, fluxtrain_bin, models, dataset, straight, phase, step):  # noqa: F811
    out = tmp_path / "run"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square --w 64 --h 64 --s 6\n")
    env = base_env(models, dataset, out, SAMPLE_PROMPTS=prompts, PARAMS_SAMPLE_EVERY_N_STEPS=2)
    proc = Running([fluxtrain_bin, "train"], {**env, "FLUXTRAIN_TEST_PAUSE_IN": phase})
    proc.wait_for(f"test hook: paused in {phase}")
    took = proc.stop()
    assert proc.proc.returncode == 0, proc.stderr
    assert took < GRACE + SLACK, f"{took:.1f} s from SIGTERM to exit"
    state = out / "state" / f"step-{step:08d}"
    assert f"stopping on signal SIGTERM during training after step {step}: the state is saved in {state}" \
        in proc.stderr, proc.stderr
    assert [p.name for p in (out / "state").iterdir()] == [state.name]
    assert (state / "COMPLETE").exists()
    if phase == "sampling":
        assert "sampling at step 2 stopped on SIGTERM" in proc.stderr
        assert not list((out / "samples").glob("*_000002_*.png")), "an abandoned sample must not be written"
    assert temporaries(out) == []
    assert not (out / "flux-lora.safetensors").exists()

    again = run([fluxtrain_bin, "train"], env=env)
    assert f"resumed from {state} at step {step} of 8" in again.stderr, again.stderr
    assert (out / "flux-lora.safetensors").read_bytes() == straight.read_bytes()
