"""Shared pytest fixtures: where the built programs are, and how to run them as a user would."""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _program(env_name: str, default: str) -> str:
    path = os.environ.get(env_name) or str(ROOT / "build" / default)
    if not os.path.exists(path):
        pytest.fail(f"{path} does not exist: build first (`make build`) or set {env_name}")
    return path


@pytest.fixture(scope="session")
def fluxtrain_bin() -> str:
    return _program("FLUXTRAIN_BIN", "fluxtrain")


@pytest.fixture(scope="session")
def test_tool() -> str:
    return _program("FLUXTRAIN_TEST_TOOL", "tests/fluxtrain_test_tool")


@pytest.fixture(scope="session")
def tokenize_tool() -> str:
    return _program("FLUXTRAIN_TOKENIZE_TOOL", "tests/tokenize_tool")


@pytest.fixture(scope="session")
def image_tool() -> str:
    return _program("FLUXTRAIN_IMAGE_TOOL", "tests/image_tool")


@pytest.fixture(scope="session")
def events_tool() -> str:
    return _program("FLUXTRAIN_EVENTS_TOOL", "tests/events_tool")


@pytest.fixture(scope="session")
def peak_rss_tool() -> str:
    return _program("FLUXTRAIN_PEAK_RSS", "tests/peak_rss")


def run(args, check: bool = True, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


# --- seeds: tests that draw fresh random inputs on every run say which, so a failure can be replayed ---

SEED_ENV = "FLUXTRAIN_TEST_SEED"
_SEEDS = pytest.StashKey[list]()


def draw_seed(request, label: str = "seed") -> int:
    """A fresh seed per run (FLUXTRAIN_TEST_SEED=N replays one), printed, and named in the report of a
    failing test (pytest shows both). `request` is the fixture request of the test or fixture that uses it."""
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(10**6))
    request.node.stash.setdefault(_SEEDS, []).append((label, seed))
    print(f"{request.node.nodeid} {label}: {seed} (replay: {SEED_ENV}={seed})")
    return seed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        seeds = [entry for node in item.listchain() for entry in node.stash.get(_SEEDS, [])]
        if seeds:
            report.sections.append(("random seeds", "\n".join(
                f"{label} = {seed}: replay with {SEED_ENV}={seed} pytest '{item.nodeid}'" for label, seed in seeds)))
    return report


# A training starts its live page on MONITOR_PORT (7860 by default): the tests that want one choose a free port
# (test_monitor.py); the others run without, so that parallel tests do not compete for 7860.
os.environ.setdefault("MONITOR_PORT", "0")
