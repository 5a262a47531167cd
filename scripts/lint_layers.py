#!/usr/bin/env python3
"""The dependency direction of src/ (docs/architecture.md "Layers", DESIGN.md "Dependency direction"),
checked on the includes themselves; run by `make test` as CTest `lint.layers`.

A folder may include its own files and those of lower layers only:

    core  <-  fetch, tokenizers, models, optim  <-  lora, data  <-  sample  <-  train  <-  dist, monitor, report, publish  <-  app

and the torch-free folders (core but its safetensors reader, tokenizers, fetch, data, report, and the option
structs of the others: train/, lora/ and optim/options.h, train/run_hooks.h, models/linear_modes.h, models/tiny_preset.h, models/flux/flux_config.*,
models/stated_config.*, lora/keys.*, lora/identify.*) include no libtorch header.

Usage: lint_layers.py [SRC_DIR]   (exit 1 with one line per finding)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

RANK = {"core": 0, "fetch": 1, "tokenizers": 1, "models": 1, "optim": 1, "lora": 2, "data": 2, "sample": 3,
        "train": 4, "dist": 5, "monitor": 5, "report": 5, "publish": 5, "app": 6}
TORCH_FREE_FOLDERS = {"core", "tokenizers", "fetch", "data", "monitor", "report"}
TORCH_FREE_FILES = {"core/safetensors.cpp": False, "core/safetensors.h": False}  # the torch-facing reader/writer
TORCH_FREE_EXTRA = re.compile(
    r"^(?:(?:train|lora|optim)/options\.(?:h|cpp)|train/run_hooks\.h|models/linear_modes\.h|models/tiny_preset\.h|models/flux/flux_config\.(?:h|cpp)|"
    r"models/identify\.(?:h|cpp)|models/header_query\.(?:h|cpp)|models/stated_config\.(?:h|cpp)|lora/keys\.(?:h|cpp)|lora/selection\.(?:h|cpp)|train/memory_plan\.(?:h|cpp)|lora/identify\.(?:h|cpp)|"
    r"sample/prompts\.(?:h|cpp)|app/[a-z_]*options[a-z_]*\.(?:h|cpp))$")
PROJECT_INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_]+)/[^"]+"', re.M)
TORCH_INCLUDE = re.compile(r"^\s*#\s*include\s+<(?:ATen|torch|c10)/", re.M)


def main() -> int:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "src"
    findings = []
    folders = set()
    for path in sorted(src.rglob("*")):
        if path.suffix not in (".cpp", ".h") or len(path.relative_to(src).parts) < 2:
            continue
        rel = path.relative_to(src).as_posix()
        layer = rel.split("/", 1)[0]
        folders.add(layer)
        if layer not in RANK:
            findings.append(f"src/{rel}: folder '{layer}' has no place in the layer order; add it to docs and here")
            continue
        text = path.read_text(errors="replace")
        for m in PROJECT_INCLUDE.finditer(text):
            dep = m.group(1)
            if dep == layer:
                continue
            if dep not in RANK or RANK[dep] >= RANK[layer]:
                findings.append(f"src/{rel}: includes {dep}/ (layer order: {layer} may include only lower layers)")
        torch_free = (layer in TORCH_FREE_FOLDERS and TORCH_FREE_FILES.get(rel, True)) or TORCH_FREE_EXTRA.match(rel)
        if torch_free and TORCH_INCLUDE.search(text):
            findings.append(f"src/{rel}: includes a libtorch header, but is torch-free by rule")
    for finding in findings:
        print(finding)
    print(f"lint_layers: {len(folders)} folders, {len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
