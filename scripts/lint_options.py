#!/usr/bin/env python3
"""Lint of the option machinery (issue 16), run by `make test` as CTest `lint.options`: no option is read
by name outside the option tables. The tables (src/app/*option*.{h,cpp}) say where every value goes, so a
string literal equal to an option's name anywhere else in src/ means a value handed on by hand. The names
come from the program itself (`fluxtrain CMD --help-env --format json`). Short common words that are also
option names of the small commands ("out", "name", "seed", ...) are checked only where they are used as
option names: in a ResolvedConfig accessor call. (tests/e2e/test_no_getenv.py checks that nothing below
src/app reads the environment.)

Usage: lint_options.py FLUXTRAIN [SRC_DIR]   (exit 1 with one line per finding)
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Literals that equal an option name but are not option reads, each with the reason.
ALLOWED = {
    # kohya's optimizer_args keys (the optimizer reads its own arguments by the reference's names).
    ("src/optim/factory.cpp", "weight_decay"), ("src/optim/factory.cpp", "d_coef"),
    ("src/optim/options.cpp", "weight_decay"), ("src/optim/options.cpp", "d_coef"),
    # The parser of kohya's key=value strings names the option it parses in its messages.
    ("src/optim/args.h", "optimizer_args"), ("src/optim/args.cpp", "optimizer_args"),
    # kohya's ss_network_args keys, written into every LoRA file as kohya writes them.
    ("src/lora/lora_file.cpp", "train_blocks"), ("src/lora/lora_file.cpp", "train_double_block_indices"),
    ("src/lora/lora_file.cpp", "train_single_block_indices"), ("src/lora/lora_file.cpp", "split_qkv"),
    ("src/lora/lora_file.cpp", "rank_dropout"), ("src/lora/lora_file.cpp", "module_dropout"),
    ("src/lora/lora_file.cpp", "train_t5xxl"),
    # LyCORIS's network_args keys, written as its kohya wrapper (lycoris.kohya) reads them.
    ("src/lora/lora_file.cpp", "factor"), ("src/lora/lora_file.cpp", "decompose_both"),
    ("src/lora/lora_file.cpp", "full_matrix"), ("src/lora/lora_file.cpp", "dora_wd"),
}
# Keys of kohya's own file schemas that are also option names: the dataset config (read in src/data, shown
# by `fluxtrain dataset`; default_caption is ai-toolkit's dataset key, also an option), the sample-prompt
# files (prompts.cpp reads kohya's TOML/JSON keys) and ComfyUI's graph format (comfyui.cpp).
SCHEMA_KEYS = {
    "dataset_config.cpp": {"batch_size", "caption_extension", "num_repeats", "resolution", "default_caption",
                           "validation_split", "alpha_mask"},
    "dataset_cmd.cpp": {"batch_size", "caption_extension", "num_repeats", "default_caption", "alpha_mask"},
    "train_cmd.cpp": {"caption_extension", "num_repeats"},
    "prompts.cpp": {"guidance_scale", "discrete_flow_shift"},
    # ComfyUI's node inputs (EmptySD3LatentImage's batch_size) in the graph a sample carries.
    "comfyui.cpp": {"batch_size"},
}

ACCESSOR = re.compile(
    r"\b(?:get_bool|get_int|get_real|get_string|get_list|find_int|find_real|find_string|is_set|given|changed|"
    r"describe|where|option)\(\s*\"([a-z0-9_]+)\"")
LITERAL = re.compile(r"\"([a-z][a-z0-9_]*)\"")


def commands(fluxtrain: str) -> list[str]:
    text = subprocess.run([fluxtrain, "--help"], capture_output=True, text=True, check=True).stdout
    names = []
    in_list = False
    for line in text.splitlines():
        if line.strip().upper().startswith("SUBCOMMANDS"):
            in_list = True
            continue
        m = re.match(r"^\s{2}([a-z][a-z0-9-]*)\s", line)
        if in_list and m:
            names.append(m.group(1))
    if not names:
        sys.exit(f"lint_options: found no commands in `{fluxtrain} --help`")
    return names


def option_names(fluxtrain: str) -> set[str]:
    names = set()
    for command in commands(fluxtrain):
        out = subprocess.run([fluxtrain, command, "--help-env", "--format", "json"], capture_output=True, text=True,
                             check=True).stdout
        names.update(spec["name"] for spec in json.loads(out))
    return names


def strip_comments(line: str) -> str:
    return line.split("//", 1)[0]


def main() -> int:
    fluxtrain = sys.argv[1]
    src = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "src"
    names = option_names(fluxtrain)
    # Distinctive names (kohya's snake_case) are checked as any literal; short words only in accessors.
    distinctive = {n for n in names if "_" in n}
    findings = []
    for path in sorted(src.rglob("*")):
        if path.suffix not in (".cpp", ".h"):
            continue
        rel = path.relative_to(src.parent).as_posix()
        in_app = rel.startswith("src/app/")
        is_table = in_app and "option" in path.name
        for number, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
            line = strip_comments(raw)
            if is_table:
                continue
            found = {m.group(1) for m in ACCESSOR.finditer(line) if m.group(1) in names}
            found |= {m.group(1) for m in LITERAL.finditer(line) if m.group(1) in distinctive}
            for name in sorted(found):
                if (rel, name) in ALLOWED or name in SCHEMA_KEYS.get(path.name, ()):
                    continue
                findings.append(f"{rel}:{number}: option name \"{name}\" outside the option tables: {raw.strip()}")
    for finding in findings:
        print(finding)
    print(f"lint_options: {len(names)} option names, {len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
