"""The tiny end-to-end run of bench/gpu_proof.sh: cache -> train -> kill -> resume -> sample with the real
`fluxtrain` program on `fluxtrain make-tiny` models, on a device (cuda on a lent GPU, cpu for the smoke).

1. `fluxtrain make-tiny` writes the model set; six small PNGs with captions make the dataset.
2. `fluxtrain cache` fills the caches; `fluxtrain train` runs straight through (the reference).
3. A second `fluxtrain train` in another folder is killed with SIGKILL once its first state is complete
   (as a Spot pod's kill -9), then started again: it must resume from that state, and its final LoRA must be
   byte-identical to the straight run's (what tests/e2e/test_kill.py checks on the CPU).
4. `fluxtrain sample` draws one image with the resumed LoRA.

Prints one JSON line with what it saw; exits 1 on a failure (the message says which step and why).
Standard library only (the GPU machine has no Pillow): the PNGs are written with zlib.

    python bench/gpu_e2e.py --bin build/fluxtrain --device cpu --workdir /tmp/e2e
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path



def png(path: Path, width: int, height: int, pixel) -> None:
    """An RGB PNG, pixel(x, y) -> (r, g, b)."""
    raw = b"".join(b"\0" + bytes(c for x in range(width) for c in pixel(x, y)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_dataset(root: Path) -> Path:
    """tests/e2e/train_env.py's dataset: six images in kohya's `2_ohwx` folder, two aspect ratios."""
    folder = root / "2_ohwx"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        w, h = (64, 64) if i % 2 == 0 else (96, 64)

        def pixel(x, y, i=i, w=w, h=h):
            inside = w // 4 <= x < w // 2 and h // 4 <= y < h // 2
            return (250, 20 * i, 10) if inside else (40 * i, 200 - 30 * i, 90)

        png(folder / f"img{i}.png", w, h, pixel)
        (folder / f"img{i}.txt").write_text(f"ohwx, a red square number {i}\n")
    return root


def run(cmd, env, what: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"gpu_e2e: {what} failed (exit status {proc.returncode}): {' '.join(map(str, cmd))}\n"
                         f"{proc.stderr[-3000:]}")
    return proc


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lora_difference(a: Path, b: Path) -> str:
    """The largest difference between two LoRA files' tensors (for the report when they are not identical)."""
    try:
        from safetensors.torch import load_file

        x, y = load_file(str(a)), load_file(str(b))
        if set(x) != set(y):
            return f"different tensors: {sorted(set(x) ^ set(y))[:4]}"
        worst = max(((x[k].float() - y[k].float()).abs().max().item(), k) for k in x)
        return f"largest difference {worst[0]:.3e} in {worst[1]}"
    except Exception as e:  # noqa: BLE001 (a report, not a check)
        return f"(could not compare the tensors: {e})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", required=True, help="the fluxtrain program")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--workdir", required=True, help="a folder for the models, data and runs (emptied first)")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--steps", type=int, default=24, help="training steps (a state every --save-every)")
    p.add_argument("--save-every", type=int, default=4, help="steps between saved states; the kill follows the first")
    a = p.parse_args()
    if a.save_every < 1 or a.steps <= a.save_every:
        p.error(f"--steps {a.steps} / --save-every {a.save_every}: the first state must come before the last step")
    STEPS, SAVE_EVERY = a.steps, a.save_every
    started = time.monotonic()
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    models, data = work / "models", write_dataset(work / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARAMS_")}
    run([a.bin, "make-tiny", "--out", models, "--seed", "3"], env, "make-tiny")

    def train_env(output: Path) -> dict:
        return dict(env, BASE_MODEL="flux", MODEL_DIR=str(models), DATASET_NAME=str(data), OUTPUT_PATH=str(output),
                    SOURCE_DATE_EPOCH="1700000000", PARAMS_DEVICE=a.device, PARAMS_RESOLUTION="64",
                    PARAMS_NETWORK_DIM="4", PARAMS_NETWORK_ALPHA="4", PARAMS_OPTIMIZER_TYPE="AdamW",
                    PARAMS_LEARNING_RATE="0.001", PARAMS_LEARNING_SCHEDULER="cosine",
                    PARAMS_MAX_TRAIN_STEPS=str(STEPS), PARAMS_SAVE_EVERY_N_STEPS=str(SAVE_EVERY),
                    PARAMS_SAVE_STATE_EVERY_MINUTES="0", PARAMS_SEED="7", PARAMS_CACHE_DIR=str(work / "cache"),
                    PARAMS_T5XXL_MAX_TOKEN_LENGTH="16")

    report = {"device": a.device, "steps": STEPS}
    cached = run([a.bin, "cache"], train_env(work / "straight"), "cache")
    report["cache"] = [line for line in cached.stderr.splitlines() if "cache:" in line][-2:]
    straight = work / "straight"
    run([a.bin, "train"], train_env(straight), "the straight train run")
    expected = straight / "flux-lora.safetensors"
    if not expected.is_file():
        raise SystemExit(f"gpu_e2e: the straight run wrote no {expected}")

    # Kill -9 once the first state is complete; on a fast device a run may end before the kill lands:
    # then again in a new folder (the kill is polled every 2 ms).
    killed = None
    for attempt in range(3):
        folder = work / f"killed-{attempt}"
        proc = subprocess.Popen([a.bin, "train"], env=train_env(folder), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        marker = folder / "state" / f"step-{SAVE_EVERY:08d}" / "COMPLETE"
        while proc.poll() is None and not marker.exists():
            time.sleep(0.002)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            if not (folder / "flux-lora.safetensors").exists():
                killed = folder
                break
        else:
            proc.communicate()
    if killed is None:
        raise SystemExit(f"gpu_e2e: three train runs of {STEPS} steps ended before a kill could land")
    states = sorted(p.name for p in (killed / "state").iterdir() if p.name.startswith("step-"))
    report["states_at_kill"] = states
    resumed = run([a.bin, "train"], train_env(killed), "the resumed train run")
    resume_lines = [line for line in resumed.stderr.splitlines() if "resumed from" in line]
    if not resume_lines:
        raise SystemExit(f"gpu_e2e: the restart after the kill did not resume from a state (states {states}):\n"
                         f"{resumed.stderr[-2000:]}")
    report["resumed"] = resume_lines[0].strip()[-160:]
    got = killed / "flux-lora.safetensors"
    report["identical"] = got.is_file() and sha256(got) == sha256(expected)
    if not report["identical"]:
        raise SystemExit(f"gpu_e2e: the killed-and-resumed run's LoRA differs from the straight run's "
                         f"({lora_difference(got, expected) if got.is_file() else 'no LoRA written'})")

    samples = work / "samples"
    run([a.bin, "sample", "--lora", got, "--prompt", "ohwx, a red square --d 5", "--width", "64", "--height", "64",
         "--steps", "4", "--out", samples, "--device", a.device], dict(env, BASE_MODEL="flux", MODEL_DIR=str(models)),
        "sample")
    images = sorted(samples.glob("*.png"))
    if not images or images[0].read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"gpu_e2e: fluxtrain sample wrote no PNG in {samples}")
    report["sample"] = f"{images[0].name} ({images[0].stat().st_size} bytes)"
    report["seconds"] = round(time.monotonic() - started, 1)
    report["ok"] = True
    print(json.dumps(report), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
