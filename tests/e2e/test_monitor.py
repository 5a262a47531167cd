"""The live training page (issue 22, items 1 and 2), in a real browser: headless Chromium (Debian's chromium and
chromedriver, driven over the WebDriver HTTP API by tests/e2e/browser.py) opens the page of a running tiny
training — with the token it shows a loss chart with one point per metrics line and the sample PNGs, and
the progress moves without a reload; without the token, 401; its stop button ends the run with exit 0 and a
complete state. `fluxtrain monitor OUTPUT_PATH` serves the finished run, also under a path prefix behind a
reverse proxy written here. Screenshots go to build/test-artifacts/monitor/ (docs/testing.md)."""
from __future__ import annotations

import http.client
import os
import re
import stat
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from browser import Browser, free_port
from test_signals import Running
from train_env import base_env, dataset, metrics, models  # noqa: F401 (fixtures)

PROMPTS = "ohwx, a red square --w 32 --h 32 --s 2 --d 1\na blue circle --w 32 --h 32 --s 2 --d 2\n"


@pytest.fixture(scope="module")
def artifacts(fluxtrain_bin) -> Path:
    folder = Path(fluxtrain_bin).resolve().parent / "test-artifacts" / "monitor"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "chromium-profile")
    yield b
    b.close()


def status_of(url: str, headers=None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def window_kept(browser) -> bool:
    """The window of the first load is still there (no reload since the mark was set)."""
    return browser.run("return window.__no_reload === true")


def metrics_lines(out: Path) -> int:
    return len((out / "metrics.jsonl").read_text().splitlines())


LOSS_POINTS = "return +document.getElementById('loss-chart').dataset.points"
LOADED = "const g = (() => {%s})(); return g.length === 2 && g.every((b) => b.loaded %s) && g"
GALLERY = """
const boxes = [...document.querySelectorAll('#gallery .prompt')];
return boxes.map((b) => ({prompt: b.dataset.prompt, steps: +b.querySelector('input').max + 1,
                          src: b.querySelector('img').getAttribute('src'),
                          loaded: b.querySelector('img').complete && b.querySelector('img').naturalWidth > 0}));
"""


def test_the_page_of_a_running_training_and_its_buttons(tmp_path, fluxtrain_bin, models, dataset,  # noqa: F811
                                                        browser, artifacts):
    out = tmp_path / "run"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    port = free_port()
    # Samples before the first step and then only when asked (the cadence is never reached); no saves but
    # the asked one and the stop's state.
    env = base_env(models, dataset, out, PARAMS_MAX_TRAIN_STEPS=100000, PARAMS_SAVE_EVERY_N_STEPS=0,
                   PARAMS_SAMPLE_EVERY_N_STEPS=50000, PARAMS_SAMPLE_AT_FIRST="true", SAMPLE_PROMPTS=prompts,
                   MONITOR_PORT=port, MONITOR_HOST="127.0.0.1")
    env.pop("MONITOR_TOKEN", None)
    proc = Running([fluxtrain_bin, "train"], env)
    try:
        proc.wait_for("live page: ")
        link = re.search(r"live page: (http://127\.0\.0\.1:\d+/)\?token=([0-9a-f]{32})", proc.stderr)
        assert link, proc.stderr
        base, token = link.group(1), link.group(2)
        assert base == f"http://127.0.0.1:{port}/"
        # The generated token: kept for the owner only, printed once, and nowhere in the log file.
        token_file = out / "monitor-token"
        assert token_file.read_text().strip() == token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert proc.stderr.count(token) == 1

        assert status_of(base) == 401
        assert status_of(base + "api/state") == 401
        assert status_of(base + "files/metrics.jsonl") == 401
        assert status_of(base + "api/state", {"Authorization": f"Bearer {token}"}) == 200

        browser.get(f"{base}?token={token}")
        assert browser.url() == base, "the link's token leaves the address bar"
        browser.wait("return document.getElementById('live').textContent === 'live'", "the live stream")
        browser.wait("return +document.getElementById('loss-chart').dataset.points >= 3", "loss points")
        gallery = browser.wait(LOADED % (GALLERY, ""),
                               "both prompts' samples, loaded")
        assert all(g["src"].startswith("files/samples/") for g in gallery), gallery
        # The progress moves without a reload: a mark left in the window survives while the step changes.
        browser.run("window.__no_reload = true")  # the mark window_kept() looks for
        first = browser.run("return document.getElementById('p-step').textContent")
        browser.wait("return document.getElementById('p-step').textContent !== arguments[0] && window.__no_reload",
                     "a new step without a reload", 120, first)
        # The chart follows the metrics file: at most a second behind it.
        points, lines = browser.run(LOSS_POINTS), metrics_lines(out)
        assert 0 < points <= lines, (points, lines)
        browser.wait("return +document.getElementById('loss-chart').dataset.points > arguments[0]",
                     "new loss points", 60, points)
        browser.screenshot(artifacts / "running.png")

        # save now: a LoRA and a state after the step in progress; sample now: one more image per prompt,
        # which the gallery shows without a reload.
        browser.click("#save-now")
        browser.wait("return document.getElementById('action-result').textContent === 'save asked for'", "save asked")
        proc.wait_for("as asked (the page's save now)", timeout=120)
        assert list(out.glob("flux-lora-step*.safetensors")), sorted(p.name for p in out.iterdir())
        browser.click("#sample-now")
        browser.wait(LOADED % (GALLERY, "&& b.steps === 2"),
                     "a second sample per prompt (sample now)")
        assert window_kept(browser)
        browser.screenshot(artifacts / "after-save-and-sample.png")

        browser.click("#stop")  # the first click asks for a confirmation, the second stops
        assert browser.run("return document.getElementById('stop').textContent") == "really stop?"
        browser.click("#stop")
        proc.proc.wait(timeout=120)
        proc._reader.join(timeout=10)
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
    assert proc.proc.returncode == 0, proc.stderr
    assert "live page: stop asked for" in proc.stderr
    states = sorted((out / "state").iterdir())
    assert states and (states[-1] / "COMPLETE").exists(), proc.stderr
    assert token not in (out / "logs" / "fluxtrain.log").read_text()
    browser.screenshot(artifacts / "stopped.png")


class PrefixProxy:
    """A reverse proxy in a few lines: /PREFIX/... -> the upstream's /..., responses streamed through (the
    page's event stream too); every path the browser asked for is recorded."""

    def __init__(self, upstream_port: int, prefix: str = "/fluxtrain/"):
        self.paths: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # close after each response: the body needs no length

            def do_GET(self):
                self._forward()

            def do_POST(self):
                self._forward()

            def _forward(self):
                proxy.paths.append(self.path)
                if not self.path.startswith(prefix):
                    self.send_error(404, "outside the prefix")
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                length = int(self.headers.get("Content-Length") or 0)
                upstream.request(self.command, "/" + self.path[len(prefix):],
                                 body=self.rfile.read(length) if length else None, headers=headers)
                response = upstream.getresponse()
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.end_headers()
                try:
                    while chunk := response.read1(65536):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                upstream.close()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_monitor_serves_a_finished_run_under_a_path_prefix(tmp_path, fluxtrain_bin, models,  # noqa: F811
                                                           dataset, browser, artifacts):
    out = tmp_path / "run"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    env = base_env(models, dataset, out, PARAMS_MAX_TRAIN_STEPS=6, PARAMS_SAMPLE_EVERY_N_STEPS=2,
                   SAMPLE_PROMPTS=prompts, MONITOR_PORT=0)
    subprocess.run([fluxtrain_bin, "train"], env=env, check=True, capture_output=True, timeout=600)
    lines = metrics(out)
    assert len(lines) == 6

    token = "a-token-of-the-test-0123456789"
    port = free_port()
    monitor_env = {**os.environ, "MONITOR_PORT": str(port), "MONITOR_HOST": "127.0.0.1", "MONITOR_TOKEN": token}
    monitor = Running([fluxtrain_bin, "monitor", out], monitor_env)
    proxy = None
    try:
        monitor.wait_for("live page: ")
        assert token not in monitor.stderr, "a token given by MONITOR_TOKEN is never printed"
        # The small executable serves it: libtorch is never loaded.
        maps = Path(f"/proc/{monitor.proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "libfluxtrain_engine" not in maps
        proxy = PrefixProxy(port)
        page = f"http://127.0.0.1:{proxy.port}/fluxtrain/"
        assert status_of(page) == 401
        browser.get(f"{page}?token={token}")
        assert browser.url() == page
        browser.wait("return document.getElementById('live').textContent === 'live'", "the live stream")
        browser.wait(f"return +document.getElementById('loss-chart').dataset.points === {len(lines)}",
                     f"{len(lines)} loss points (one per metrics line)", 60)
        gallery = browser.wait(LOADED % (GALLERY, ""),
                               "both prompts' samples, loaded")
        assert [g["steps"] for g in gallery] == [3, 3], gallery  # steps 2, 4, 6
        # Step back through the first prompt's checkpoints.
        browser.click("#gallery .prompt .prev")
        assert "000004" in browser.run("return document.querySelector('#gallery .prompt img').getAttribute('src')")
        assert "network_dim" in browser.run("return document.getElementById('config').textContent")
        files = browser.run("return [...document.querySelectorAll('#files a')].map((a) => a.getAttribute('href'))")
        assert "files/flux-lora.safetensors" in files and "files/metrics.jsonl" in files, files
        assert not any(f.startswith(("/", "http")) for f in files), files
        # The buttons need a training in this process: disabled here.
        assert browser.run("return document.getElementById('stop').disabled") is True
        browser.screenshot(artifacts / "finished-under-prefix.png")
        # Every request the page made stayed under the prefix (relative URLs only).
        outside = [p for p in proxy.paths if not p.startswith("/fluxtrain/")]
        assert proxy.paths and not outside, outside
        assert any(p.startswith("/fluxtrain/events") for p in proxy.paths)
    finally:
        if proxy:
            proxy.close()
        if monitor.proc.poll() is None:
            took = monitor.stop()
            assert took < 15
    assert monitor.proc.returncode == 0, monitor.stderr


def test_a_busy_port_is_a_warning_and_the_training_goes_on(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = tmp_path / "run"
        result = subprocess.run([fluxtrain_bin, "train"], capture_output=True, text=True, timeout=600,
                                env=base_env(models, dataset, out, PARAMS_MAX_TRAIN_STEPS=2, MONITOR_PORT=port,
                                             MONITOR_HOST="127.0.0.1"))
    assert result.returncode == 0, result.stderr
    assert f"the live page cannot listen on 127.0.0.1:{port} (MONITOR_PORT)" in result.stderr
    assert "the training goes on without a page" in result.stderr
    assert len(metrics(out)) == 2


def test_bad_monitor_settings_are_named(tmp_path, fluxtrain_bin):
    result = subprocess.run([fluxtrain_bin, "monitor", tmp_path], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MONITOR_TOKEN": "Qz7x9w"})
    assert result.returncode != 0
    assert "MONITOR_TOKEN" in result.stderr and "16" in result.stderr and "Qz7x9w" not in result.stderr, result.stderr
    result = subprocess.run([fluxtrain_bin, "monitor", tmp_path / "nothing"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "MONITOR_PORT": "7861"})
    assert result.returncode != 0 and "nothing" in result.stderr, result.stderr
    result = subprocess.run([fluxtrain_bin, "monitor", tmp_path], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MONITOR_PORT": "0"})
    assert result.returncode != 0 and "MONITOR_PORT is 0" in result.stderr, result.stderr
