"""Only src/app reads the environment (docs/architecture.md, "The environment is read in app/"): every
environment variable is an option of the option tables (the knobs: src/app/knob_options.cpp), resolved in
src/app and handed down as a plain value. This test fails on any getenv, secure_getenv or environ in src/ outside src/app/,
comments included, so that a new knob cannot slip into a lower layer."""
from __future__ import annotations

import re

from conftest import ROOT

SRC = ROOT / "src"
ALLOWED = SRC / "app"
READS = re.compile(r"\b(?:secure_getenv|getenv|__environ|environ)\b")


def environment_reads() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*")):
        if path.suffix not in {".h", ".hpp", ".cpp", ".cc", ".c", ".inc"} or ALLOWED in path.parents:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if READS.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_no_environment_reads_below_app():
    found = environment_reads()
    assert not found, ("code below src/app reads the environment; add a knob to src/app/knob_options.cpp "
                       "(an option of the command's table) and pass the value down instead:\n" + "\n".join(found))


def test_the_scan_sees_the_sources():
    # A wrong root would make the test above pass on nothing.
    assert (SRC / "core" / "error.h").is_file() and (ALLOWED / "knob_options.cpp").is_file()
    assert len(list(SRC.rglob("*.cpp"))) > 50
