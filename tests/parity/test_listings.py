"""The committed header listings of the real files (tests/reference/listings) against the counts measured
on the real files (spec/flux.md §0), and the full-size modules built on the meta device against them."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import run

LISTINGS = Path(__file__).resolve().parent.parent / "reference" / "listings"

# tensors, parameters (T5 without its duplicate embedding), as measured on the real files.
REAL = {
    "flux1-dev": (780, 11_901_408_320),
    "flux1-schnell": (776, 11_891_178_560),
    "ae": (244, 83_819_683),
    "clip_l": (196, 123_060_480),
    "t5xxl_fp16": (220, 4_762_310_656),
}


def listing(name):
    return json.loads((LISTINGS / f"{name}.json").read_text())["tensors"]


@pytest.mark.parametrize("name", sorted(REAL))
def test_listing_counts_match_the_real_files(name):
    tensors = listing(name)
    count, params = REAL[name]
    assert len(tensors) == count
    total = sum(math.prod(t["shape"]) for k, t in tensors.items() if k != "encoder.embed_tokens.weight")
    assert total == params


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_flux_on_the_meta_device_matches_the_listing(test_tool, variant):
    ours = json.loads(run([test_tool, "flux-keys", variant]).stdout)
    assert ours == {k: t["shape"] for k, t in listing(f"flux1-{variant}").items()}


@pytest.mark.parametrize("family,name", [("ae", "ae"), ("clip", "clip_l"), ("t5", "t5xxl_fp16")])
def test_encoders_on_the_meta_device_match_the_listings(test_tool, family, name):
    ours = json.loads(run([test_tool, "encoders-keys", family]).stdout)
    expected = {k: t["shape"] for k, t in listing(name).items()}
    # The T5 module holds the embedding once; the file repeats it as encoder.embed_tokens.weight.
    expected.pop("encoder.embed_tokens.weight", None)
    assert ours == expected
