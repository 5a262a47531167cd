"""Benchmark: does an open live page slow the training? (issue 22, item 2)

Trains a tiny model on the CPU twice per repeat — once with no page (MONITOR_PORT=0, the baseline) and once
with the page on and a reader that does what an open browser tab does, harder: the event stream held open,
plus a full page load every `--load-interval` seconds (index.html, monitor.js, monitor.css, api/state,
api/metrics from 0, api/files, api/details, metrics.jsonl) — alternating which goes first. Each run's speed
is its median `step_seconds` over the steps after the first two (metrics.jsonl); the result is the ratio
of the page runs' steps/s to the baseline's (1.0 = no effect). Printed, never asserted.

    python bench/monitor_overhead.py              # 60 steps per run, 2 repeats
    python bench/monitor_overhead.py --smoke      # seconds: 8 steps, 1 repeat
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
TOKEN = "bench-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_dataset(root: str) -> str:
    from PIL import Image
    folder = os.path.join(root, "2_ohwx")
    os.makedirs(folder, exist_ok=True)
    for i in range(6):
        w, h = (64, 64) if i % 2 == 0 else (96, 64)
        Image.new("RGB", (w, h), (40 * i, 200 - 30 * i, 90)).save(os.path.join(folder, f"img{i}.png"))
        with open(os.path.join(folder, f"img{i}.txt"), "w") as f:
            f.write(f"ohwx, a red square number {i}\n")
    return root


def env_for(work: str, models: str, data: str, out: str, steps: int, port: int, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARAMS_", "MONITOR_"))}
    env.update({"BASE_MODEL": "flux", "MODEL_DIR": models, "DATASET_NAME": data, "OUTPUT_PATH": out,
                "PARAMS_DEVICE": "cpu", "PARAMS_RESOLUTION": "64", "PARAMS_NETWORK_DIM": "4",
                "PARAMS_OPTIMIZER_TYPE": "AdamW", "PARAMS_LEARNING_RATE": "0.001", "PARAMS_MAX_TRAIN_STEPS": str(steps),
                "PARAMS_SAVE_EVERY_N_STEPS": "0", "PARAMS_SEED": "7", "PARAMS_CACHE_DIR": os.path.join(work, "cache"),
                "MONITOR_PORT": str(port), "MONITOR_HOST": "127.0.0.1", "MONITOR_TOKEN": TOKEN})
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


class Reader:
    """An open tab, harder: the event stream, and a full page load every `interval` seconds."""

    def __init__(self, port: int, interval: float):
        self.base = f"http://127.0.0.1:{port}/"
        self.interval = interval
        self.done = threading.Event()
        self.loads = 0
        self.events = 0
        self.threads = [threading.Thread(target=self.stream, daemon=True),
                        threading.Thread(target=self.load, daemon=True)]
        for t in self.threads:
            t.start()

    def get(self, path: str, timeout: float = 10):
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {TOKEN}"})
        return urllib.request.urlopen(request, timeout=timeout)

    def stream(self):
        while not self.done.is_set():
            try:
                with self.get("events", timeout=30) as r:
                    for line in r:
                        if line.startswith(b"event: update"):
                            self.events += 1
                        if self.done.is_set():
                            return
            except OSError:
                time.sleep(0.1)

    def load(self):
        paths = ["", "monitor.js", "monitor.css", "api/state", "api/metrics?from=0", "api/files", "api/details",
                 "files/metrics.jsonl"]
        while not self.done.wait(self.interval):
            try:
                for p in paths:
                    with self.get(p) as r:
                        r.read()
                self.loads += 1
            except OSError:
                pass

    def stop(self):
        self.done.set()


def run_once(args, work, models, data, with_page: bool, index: int) -> dict:
    out = os.path.join(work, f"run-{index}-{'page' if with_page else 'none'}")
    port = free_port() if with_page else 0
    proc = subprocess.Popen([args.bin, "train"], env=env_for(work, models, data, out, args.steps, port, args.threads),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reader = None
    if with_page:
        for line in proc.stderr:  # the page is up when it says so
            if "live page:" in line:
                break
        reader = Reader(port, args.load_interval)
    _, err = proc.communicate(timeout=3600)
    if reader:
        reader.stop()
    if proc.returncode != 0:
        sys.exit(f"fluxtrain train exited {proc.returncode}:\n{err}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        seconds = [json.loads(line)["step_seconds"] for line in f][2:]
    return {"page": with_page, "median_step_seconds": statistics.median(seconds),
            "loads": reader.loads if reader else 0, "events": reader.events if reader else 0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--load-interval", type=float, default=0.5, help="seconds between full page loads")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS (0: unset)")
    p.add_argument("--smoke", action="store_true", help="8 steps, 1 repeat")
    p.add_argument("--bin", default=os.environ.get("FLUXTRAIN_BIN", os.path.join(ROOT, "build", "fluxtrain")))
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.repeats = 8, 1
    with tempfile.TemporaryDirectory(prefix="fluxtrain-monitor-bench-") as work:
        models = os.path.join(work, "models")
        subprocess.run([args.bin, "make-tiny", "--out", models, "--seed", "3"], check=True, capture_output=True)
        data = write_dataset(os.path.join(work, "data"))
        # The caches once, so that every run trains from the same warm caches.
        warm = env_for(work, models, data, os.path.join(work, "warm"), 1, 0, args.threads)
        subprocess.run([args.bin, "cache"], env=warm, check=True, capture_output=True)
        runs = []
        for r in range(args.repeats):
            order = [False, True] if r % 2 == 0 else [True, False]
            for with_page in order:
                runs.append(run_once(args, work, models, data, with_page, len(runs)))
                print(json.dumps(runs[-1]), flush=True)
    base = statistics.median(1 / x["median_step_seconds"] for x in runs if not x["page"])
    page = statistics.median(1 / x["median_step_seconds"] for x in runs if x["page"])
    print(f"steps/s without a page: {base:.3f}; with an open page (event stream + a page load every "
          f"{args.load_interval} s): {page:.3f}; ratio {page / base:.3f} "
          f"({args.steps} steps per run, {args.repeats} repeats, {datetime.date.today()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
