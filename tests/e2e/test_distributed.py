"""Data-parallel training on c10d (issue 21): Gloo ranks on 127.0.0.1, started by `fluxtrain train --nproc N`
and by the venv's `torchrun --no-python`. N ranks x batch b equal one process x batch N*b (fp32, relative
error <= 1e-5 on every LoRA tensor) with AdamW, with Prodigy and with gradient accumulation; a state resumes
at the same world size byte-identically and at another one that keeps the global batch within the same
tolerance; a dead or hung rank stops the others with a named error, no process left behind; ranks with
different options stop at the start with the options named."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run
from train_env import base_env, dataset, lora_tensors, metrics, models  # noqa: F401 (fixtures)

# fp32 relative error of the LoRA: ||a - b|| / ||b|| over all its tensors as one vector. The ranks sum their
# gradients in another order than one process does, and Adam amplifies a gradient's last bits where it is near
# its eps (an update's derivative there is lr / eps): single elements then differ by up to ~0.5 % of one step
# (docs/distributed.md), the LoRA as a whole by ~2e-7.
TOLERANCE = 1e-5
STEPS = 12


def env_for(models, dataset, out, nproc, batch, **params):  # noqa: F811
    settings = dict(PARAMS_NUM_PROCESSES=nproc, PARAMS_TRAIN_BATCH_SIZE=batch, PARAMS_MAX_TRAIN_STEPS=STEPS,
                    PARAMS_SAVE_EVERY_N_STEPS=0, PARAMS_COLLECTIVE_TIMEOUT_SECONDS=60, PARAMS_SAVE_PRECISION="fp32",
                    PARAMS_SAVE_STATE_EVERY_MINUTES=0)
    settings.update(params)
    env = base_env(models, dataset, out, **settings)
    env.pop("OMP_NUM_THREADS", None)  # the launcher's own share of the CPUs
    return env


def relative_error(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    difference = sum(((a[k].double() - b[k].double()) ** 2).sum().item() for k in b)
    size = sum((b[k].double() ** 2).sum().item() for k in b)
    return (difference / size) ** 0.5


def assert_same_training(out, reference, tolerance=TOLERANCE):
    error = relative_error(lora_tensors(out / "flux-lora.safetensors"), lora_tensors(reference / "flux-lora.safetensors"))
    assert error <= tolerance, f"LoRA relative error {error:.3g} > {tolerance}"
    steps = [m["step"] for m in metrics(out)]
    assert steps == [m["step"] for m in metrics(reference)]
    for a, b in zip(metrics(out), metrics(reference)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), f"step {a['step']}: loss {a['loss']} vs {b['loss']}"
    return error


def rank_lines(result) -> str:
    return result.stdout + result.stderr


CASES = {
    "adamw": {},
    "prodigy": {"PARAMS_OPTIMIZER_TYPE": "Prodigy", "PARAMS_LEARNING_RATE": "1"},
    "adamw-accumulation-2": {"PARAMS_GRADIENT_ACCUMULATION_STEPS": 2},
    "full-finetune": {"PARAMS_NETWORK_TYPE": "none", "PARAMS_LEARNING_RATE": "0.0001"},
    "full-finetune-zero-1": {"PARAMS_NETWORK_TYPE": "none", "PARAMS_LEARNING_RATE": "0.0001", "PARAMS_ZERO_STAGE": 1},
}


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_equal_one_rank(tmp_path, fluxtrain_bin, models, dataset, case):  # noqa: F811
    one = tmp_path / "one"
    run([fluxtrain_bin, "train"], env=env_for(models, dataset, one, 1, 4, **CASES[case]))
    two = tmp_path / "two"
    result = run([fluxtrain_bin, "train"], env=env_for(models, dataset, two, 2, 2, **CASES[case]))
    assert "starting 2 ranks" in rank_lines(result)
    # Each rank gets its share of the CPUs (not every CPU each: OpenMP workers oversubscribed 2x made a step 4x
    # slower on 2 cores).
    threads = int(re.search(r"OMP_NUM_THREADS=(\d+) each", rank_lines(result))[1])
    assert threads == 1 or 2 * threads <= len(os.sched_getaffinity(0)), rank_lines(result)
    assert f"(gloo on cpu, {threads} CPU thread" in rank_lines(result), rank_lines(result)
    error = assert_same_training(two, one)
    print(f"{case}: 2 ranks x batch 2 vs 1 rank x batch 4: LoRA relative error {error:.3g}")
    # Rank 0 alone wrote the run's files; the state records the world.
    state = sorted((two / "state").iterdir())[-1]
    info = __import__("json").loads((state / "state.json").read_text())
    assert info["world"] == 2 and info["device_batch"] == 2
    if not case.startswith("full-finetune"):
        assert len(info["rank_generators"]) == 2


def test_torchrun_launch(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    torchrun = Path(sys.executable).parent / "torchrun"
    assert torchrun.exists(), f"{torchrun}: the venv's torchrun is missing"
    one = tmp_path / "one"
    run([fluxtrain_bin, "train"], env=env_for(models, dataset, one, 1, 4))
    two = tmp_path / "two"
    env = env_for(models, dataset, two, "auto", 2)
    run([torchrun, "--no-python", "--standalone", "--nproc-per-node", "2", fluxtrain_bin, "train"], env=env,
        timeout=600)
    assert_same_training(two, one)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_resume_after_kill_at_same_and_other_world_size(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    params = dict(PARAMS_MAX_TRAIN_STEPS=24, PARAMS_SAVE_EVERY_N_STEPS=4, PARAMS_SAVE_STATE="true",
                  PARAMS_KEEP_LAST_N_STATES=10)
    straight = tmp_path / "straight"
    run([fluxtrain_bin, "train"], env=env_for(models, dataset, straight, 2, 2, **params))
    for attempt in range(4):
        killed = tmp_path / f"killed-{attempt}"
        launcher = subprocess.Popen([fluxtrain_bin, "train"], env=env_for(models, dataset, killed, 2, 2, **params),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(children(launcher.pid)) == 2 or launcher.poll() is not None, 60, "the ranks")
        ranks = children(launcher.pid)
        wait_for(lambda: (killed / "state" / "step-00000004" / "COMPLETE").exists() or launcher.poll() is not None,
                 300, "the state of step 4")
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        # The ranks die with their launcher.
        wait_for(lambda: not any(alive(p) for p in ranks), 10, "the ranks to die with the launcher")
        if not (killed / "flux-lora.safetensors").exists():
            break
    else:
        pytest.fail("every run finished before the launcher was killed")
    other = tmp_path / "other-world"
    shutil.copytree(killed, other)

    result = run([fluxtrain_bin, "train"], env=env_for(models, dataset, killed, 2, 2, **params))
    assert "resuming from" in rank_lines(result)
    assert (killed / "flux-lora.safetensors").read_bytes() == (straight / "flux-lora.safetensors").read_bytes()

    result = run([fluxtrain_bin, "train"], env=env_for(models, dataset, other, 1, 4, **params))
    assert "the same global batch (4 images per step)" in rank_lines(result)
    error = relative_error(lora_tensors(other / "flux-lora.safetensors"),
                           lora_tensors(straight / "flux-lora.safetensors"))
    print(f"2 ranks killed, resumed on 1 rank x batch 4: LoRA relative error {error:.3g}")
    assert error <= TOLERANCE

    # A world size that changes the global batch is a named error with the settings that fit.
    third = tmp_path / "third"
    shutil.copytree(other, third, dirs_exist_ok=True)
    for state in sorted((third / "state").iterdir())[1:]:
        shutil.rmtree(state)
    (third / "flux-lora.safetensors").unlink()
    result = run([fluxtrain_bin, "train"], check=False,
                 env=env_for(models, dataset, third, 1, 2, PARAMS_RESUME_FROM=sorted((third / "state").iterdir())[0],
                             **params))
    assert result.returncode != 0
    text = rank_lines(result)
    assert "2 ranks x batch 2 per device x gradient accumulation 1 = 4 images per optimizer step" in text, text
    assert "batch_size = 4 per device" in text and "gradient_accumulation_steps = 2" in text, text


def start_endless_run(fluxtrain_bin, models, dataset, out, timeout):  # noqa: F811
    """A 2-rank run of (practically) endless steps, once it has logged its first step: (launcher, rank pids)."""
    launcher = subprocess.Popen([fluxtrain_bin, "train"],
                                env=env_for(models, dataset, out, 2, 2, PARAMS_MAX_TRAIN_STEPS=100000,
                                            PARAMS_COLLECTIVE_TIMEOUT_SECONDS=timeout),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: launcher.poll() is not None or
             ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size > 0), 300, "the first steps")
    if launcher.poll() is not None:  # ended before its first step: say why
        _, stderr = launcher.communicate()
        raise AssertionError(f"the run ended (exit {launcher.returncode}) before its first step:\n{stderr}")
    ranks = sorted(children(launcher.pid))
    assert len(ranks) == 2
    return launcher, ranks


def test_dead_rank_stops_the_others(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    launcher, ranks = start_endless_run(fluxtrain_bin, models, dataset, tmp_path / "out", 20)
    os.kill(ranks[1], signal.SIGKILL)  # rank 1: started second
    started = time.monotonic()
    _, stderr = launcher.communicate(timeout=60)
    took = time.monotonic() - started
    assert launcher.returncode != 0
    assert f"rank 1 (pid {ranks[1]}) was killed by signal 9 (SIGKILL)" in stderr, stderr
    assert "rank 0 of 2: the " in stderr and "failed" in stderr and "another rank stopped, died or hung" in stderr, stderr
    assert not any(alive(p) for p in ranks)
    print(f"rank 1 killed: the launcher returned after {took:.1f} s")


def test_hung_rank_stops_the_others_after_the_timeout(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    # 15 s: long enough that a machine busy with other tests does not reach it before the stop.
    launcher, ranks = start_endless_run(fluxtrain_bin, models, dataset, tmp_path / "out", 15)
    os.kill(ranks[1], signal.SIGSTOP)
    started = time.monotonic()
    _, stderr = launcher.communicate(timeout=120)
    took = time.monotonic() - started
    assert launcher.returncode != 0
    assert "rank 0 of 2: the " in stderr and "collective_timeout_seconds, 15 s" in stderr, stderr
    assert not any(alive(p) for p in ranks)
    print(f"rank 1 stopped (SIGSTOP): the launcher returned after {took:.1f} s (timeout 15 s)")


def test_ranks_with_different_options_stop_at_start(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank, lr in ((0, "0.001"), (1, "0.002")):
        env = env_for(models, dataset, tmp_path / "out", 1, 2, PARAMS_LEARNING_RATE=lr, RANK=rank, WORLD_SIZE=2,
                      LOCAL_RANK=rank, LOCAL_WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([fluxtrain_bin, "train"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, stderr = p.communicate(timeout=120)
        assert p.returncode != 0
        assert "the ranks do not run the same training" in stderr, stderr
        assert "option learning_rate: 0.002 on rank 1, 0.001 on rank 0" in stderr, stderr
    assert not (tmp_path / "out" / "flux-lora.safetensors").exists()


def test_sigterm_to_the_launcher_stops_every_rank_after_one_state(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    params = dict(PARAMS_MAX_TRAIN_STEPS=40)
    straight = tmp_path / "straight"
    run([fluxtrain_bin, "train"], env=env_for(models, dataset, straight, 2, 2, **params))
    out = tmp_path / "out"
    launcher = subprocess.Popen([fluxtrain_bin, "train"], env=env_for(models, dataset, out, 2, 2, **params),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3,
             120, "three steps")
    ranks = children(launcher.pid)
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=60)
    assert launcher.returncode == 0, stderr
    assert not any(alive(p) for p in ranks)
    states = sorted((out / "state").iterdir())
    if (out / "flux-lora.safetensors").exists():
        pytest.skip("the run finished before the signal")
    assert len(states) == 1, states  # rank 0 wrote one state, of the step every rank stopped after
    stopped_at = int(states[0].name.split("-")[1])
    assert stopped_at == metrics(out)[-1]["step"]
    assert stderr.count("stopping on signal SIGTERM") == 1, stderr
    run([fluxtrain_bin, "train"], env=env_for(models, dataset, out, 2, 2, **params))
    assert (out / "flux-lora.safetensors").read_bytes() == (straight / "flux-lora.safetensors").read_bytes()


def test_zero_1_states_hold_every_rank_s_share_and_resume_either_way(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    params = dict(PARAMS_NETWORK_TYPE="none", PARAMS_LEARNING_RATE="0.0001", PARAMS_ZERO_STAGE=1,
                  PARAMS_SAVE_EVERY_N_STEPS=6, PARAMS_SAVE_STATE="true")
    straight = tmp_path / "straight"
    result = run([fluxtrain_bin, "train"], env=env_for(models, dataset, straight, 2, 2, **params))
    assert "zero_stage 1: each rank keeps the optimizer state of its share" in rank_lines(result)
    expected = (straight / "flux-lora.safetensors").read_bytes()
    for zero in (1, 0):
        again = tmp_path / f"again-zero-{zero}"
        shutil.copytree(straight, again)
        shutil.rmtree(again / "state" / "step-00000012")
        (again / "flux-lora.safetensors").unlink()
        run([fluxtrain_bin, "train"], env=env_for(models, dataset, again, 2, 2, **{**params, "PARAMS_ZERO_STAGE": zero}))
        assert (again / "flux-lora.safetensors").read_bytes() == expected, f"resumed with zero_stage {zero}"


def test_zero_1_with_prodigy_is_a_named_error(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    result = run([fluxtrain_bin, "train"], check=False,
                 env=env_for(models, dataset, tmp_path / "out", 2, 2, PARAMS_ZERO_STAGE=1, PARAMS_OPTIMIZER_TYPE="Prodigy",
                             PARAMS_LEARNING_RATE="1"))
    assert result.returncode != 0
    assert "zero_stage = 1 shards the state of element-wise optimizers, but Prodigy's step reads every gradient" \
        in rank_lines(result), rank_lines(result)


def test_two_machines_through_torchrun_rendezvous(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    """Two torchrun agents meeting through the c10d rendezvous, one rank each, as two machines would (both on
    127.0.0.1 here): the same LoRA as one process at the global batch."""
    import socket
    torchrun = Path(sys.executable).parent / "torchrun"
    one = tmp_path / "one"
    run([fluxtrain_bin, "train"], env=env_for(models, dataset, one, 1, 4))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = tmp_path / "two"
    # Two machines would have their own CPUs: here each "machine" gets half of this one's.
    env = {**env_for(models, dataset, two, "auto", 2), "OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // 2))}
    agents = [subprocess.Popen([torchrun, "--no-python", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend",
                                "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "fluxtrain-test",
                                fluxtrain_bin, "train"],
                               env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for agent in agents:
        _, stderr = agent.communicate(timeout=600)
        assert agent.returncode == 0, stderr[-3000:]
    assert_same_training(two, one)


def test_rank_0_renders_the_samples_the_others_wait(tmp_path, fluxtrain_bin, models, dataset):  # noqa: F811
    """With 2 ranks rank 0 renders the samples (before the first step and every 4 steps) while the other
    waits: the same files as one process writes, and the same LoRA."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("ohwx, a red square --w 32 --h 32 --s 2 --d 1\n")
    params = dict(PARAMS_SAMPLE_EVERY_N_STEPS=4, PARAMS_SAMPLE_AT_FIRST="true", SAMPLE_PROMPTS=prompts)
    one, two = tmp_path / "one", tmp_path / "two"
    run([fluxtrain_bin, "train"], env=env_for(models, dataset, one, 1, 4, **params))
    run([fluxtrain_bin, "train"], env=env_for(models, dataset, two, 2, 2, **params))
    names = sorted(p.name for p in (two / "samples").glob("*.png"))
    assert names == sorted(p.name for p in (one / "samples").glob("*.png"))
    assert names == [f"flux-lora_{s:06d}_00_1.png" for s in (0, 4, 8, 12)]
    assert_same_training(two, one)
