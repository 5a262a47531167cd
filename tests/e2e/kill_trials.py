"""SIGKILL at random moments, then restart (issue 18): what a Spot pod's kill -9, an out-of-memory kill or a
lost host does to a run with the default settings (no LoRA cadence; the states on the timer).

One trial starts `fluxtrain train` on the run folder and kills it with SIGKILL: at a random moment of the
start (loading, caching, first steps), at a random moment of training, or the moment one of its states'
temporary folder appears (a kill while a state is being written). After every kill
the folder is checked: every state under its final name verifies against its COMPLETE marker (sizes and
SHA-256, recomputed here), every LoRA file under its final name is a whole safetensors file, and no file is
half-written where a complete one is expected. The next start must resume from the newest state whenever
one exists (never from step 0). After the trials the run is finished and its LoRA must be byte-identical to
an uninterrupted run's.

Used by tests/e2e/test_kill.py (8 trials) and by scripts/soak_kill.sh N (the long soak, docs/training.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Default settings but for the cadences the test needs: no LoRA files on a step cadence (the seed's 100 steps
# would never come in a short run anyway) and a state timer short enough to fire many times in seconds.
KILL_PARAMS = {
    "PARAMS_MAX_TRAIN_STEPS": "150",
    "PARAMS_T5XXL_MAX_TOKEN_LENGTH": "16",  # short steps (the tiny model's attention is mostly text tokens)
    "PARAMS_SAVE_EVERY_N_STEPS": "0",
    "PARAMS_SAVE_STATE_EVERY_MINUTES": "0.004",  # 0.24 s
}
STATE = re.compile(r"^step-(\d{8})$")
RESUMED = re.compile(r"resum\w* from \S*step-(\d{8})")
STARTED = re.compile(r"^training \S+ in ", re.M)  # the trainer's first line: the run folder and resume point


@dataclass
class Report:
    trials: int = 0           # kills
    finished_runs: int = 0    # starts that ran to the end before their kill came
    kills_mid_save: int = 0   # kills that left a state's temporary folder behind (a save was under way)
    resumes: int = 0          # restarts that resumed from a state
    fresh_starts: int = 0     # restarts with no state yet (a kill before the first timer state)
    failures: list[str] = field(default_factory=list)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_problem(folder: Path) -> str:
    """'' when the state folder is whole (its COMPLETE lists every file with the size and SHA-256 it has)."""
    marker = folder / "COMPLETE"
    if not marker.is_file():
        return f"{folder.name} has no COMPLETE marker under its final name"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"{folder.name}/COMPLETE is not the marker's JSON: {e}"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{folder.name}/{name} is missing"
        if path.stat().st_size != expected["size"] or sha256(path) != expected["sha256"]:
            return f"{folder.name}/{name} differs from its COMPLETE record"
    return ""


def safetensors_problem(path: Path) -> str:
    """'' when the file is a whole safetensors file: a JSON header whose tensors end exactly at the file's end."""
    data = path.read_bytes()
    if len(data) < 8:
        return f"{path.name}: {len(data)} bytes"
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        return f"{path.name}: the header is not JSON (cut)"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != len(data):
        return f"{path.name}: {len(data)} bytes, the header describes {8 + n + end}"
    return ""


def newest_state(out: Path) -> int | None:
    steps = [int(m.group(1)) for p in (out / "state").glob("step-*") if (m := STATE.match(p.name))]
    return max(steps, default=None)


def check_folder(out: Path) -> list[str]:
    problems = []
    for folder in sorted((out / "state").glob("step-*")) if (out / "state").is_dir() else []:
        if STATE.match(folder.name):
            if problem := state_problem(folder):
                problems.append(problem)
    for path in sorted(out.glob("*.safetensors")):
        if problem := safetensors_problem(path):
            problems.append(problem)
    return problems


def temporaries(out: Path, pid: int) -> set[str]:
    """The temporary state folders of process `pid` (.step-XXXXXXXX.tmp-PID: a save under way)."""
    try:
        return {entry.name for entry in os.scandir(out / "state") if entry.name.endswith(f".tmp-{pid}")}
    except FileNotFoundError:
        return set()


def one_trial(bin_: str, env: dict, out: Path, rng: random.Random, kind: str, report: Report, log=print) -> bool:
    """Starts, kills (SIGKILL) and checks. `kind`: "startup" kills 0.3-3 s after the start (model loading,
    caching, or the first steps); "training" 0-2 s after the process began its first state; "mid-save" the
    moment its 1st, 2nd or 3rd state's temporary folder appears. Returns False when the run finished first."""
    before = newest_state(out)
    proc = subprocess.Popen([bin_, "train"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        if kind == "startup":
            deadline = time.monotonic() + rng.uniform(0.3, 3.0)
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        else:
            wanted = rng.randint(1, 3) if kind == "mid-save" else 1
            seen: set[str] = set()
            while proc.poll() is None and time.monotonic() < deadline and len(seen) < wanted:
                seen |= temporaries(out, proc.pid)
                time.sleep(0.0002)
            if kind == "training":
                deadline = time.monotonic() + rng.uniform(0.0, 2.0)
                while proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.005)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        output = proc.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if killed:
        report.trials += 1
    else:
        report.finished_runs += 1
    mid_save = killed and bool(temporaries(out, proc.pid))
    if mid_save:
        report.kills_mid_save += 1
    # Where it started from: the state that existed when it started, if any.
    m = RESUMED.search(output)
    decided = STARTED.search(output) is not None  # a kill in the first moments may come before the choice
    if before is not None and decided:
        if not m:
            report.failures.append(f"trial {report.trials}: a state of step {before} existed but the start did not "
                                   f"resume from it:\n{output[-2000:]}")
        else:
            report.resumes += 1
            if int(m.group(1)) != before:
                report.failures.append(f"trial {report.trials}: resumed from step {m.group(1)}, the newest state "
                                       f"was step {before}")
    elif before is None:
        report.fresh_starts += 1
    if not killed and proc.returncode != 0:
        report.failures.append(f"trial {report.trials}: exit {proc.returncode}:\n{output[-2000:]}")
    for problem in check_folder(out):
        report.failures.append(f"trial {report.trials} ({kind} kill): {problem}")
    log(f"trial {report.trials} ({kind}): {'killed' if killed else 'finished'}"
        f"{' while a state was being written' if mid_save else ''}; newest state before: {before}, "
        f"after: {newest_state(out)}")
    return killed


def run_trials(bin_: str, env: dict, out: Path, trials: int, seed: int, log=print) -> Report:
    """`trials` kills (in turn: during the start, while a state is being written, during training), then the
    run to its end."""
    rng = random.Random(seed)
    report = Report()
    while report.trials < trials:
        kind = ("startup", "mid-save", "training")[report.trials % 3]
        if not one_trial(bin_, env, out, rng, kind, report=report, log=log):
            break  # the run finished: the rest of the trials would only restart a finished run
    final = subprocess.run([bin_, "train"], env=env, capture_output=True, text=True, timeout=600)
    if final.returncode != 0:
        report.failures.append(f"the final start failed ({final.returncode}):\n{final.stderr[-2000:]}")
    report.failures.extend(f"after the final start: {p}" for p in check_folder(out))
    return report
