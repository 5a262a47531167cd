"""The C++ tokenizers (tests/tools/tokenize_tool) against transformers' CLIPTokenizer and T5Tokenizer, id
for id, on fixed hard cases plus fresh random prompts every run.

The references are built from the files in assets/tokenizers/ the way the Flux pipelines configure
them: CLIP with <|startoftext|> as a `normalized` added token, <|endoftext|> as padding and 77 tokens
(black-forest-labs/FLUX.1-dev tokenizer/tokenizer_config.json); T5 converted from spiece.model by
transformers itself, truncated to 512 (dev) and 256 (schnell).

A failure prints the seed; FLUXTRAIN_TOKENIZER_SEED=<seed> replays the same prompts.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets" / "tokenizers"
RANDOM_PROMPTS = 260
T5_LENGTHS = (512, 256)


@pytest.fixture(scope="module")
def clip_reference():
    from transformers import AddedToken, CLIPTokenizer
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    tokenizer = CLIPTokenizer.from_pretrained(
        str(ASSETS / "clip_l"),
        bos_token=AddedToken("<|startoftext|>", normalized=True, special=True),
        pad_token="<|endoftext|>",
        model_max_length=77,
    )
    # transformers 5 has only the Hugging Face tokenizers implementation (no ftfy, no BasicTokenizer).
    assert isinstance(tokenizer, TokenizersBackend)
    return tokenizer


@pytest.fixture(scope="module")
def t5_reference():
    import transformers.convert_slow_tokenizer as convert
    from transformers import T5Tokenizer
    from transformers.tokenization_utils_tokenizers import TokenizersBackend
    from transformers.utils import sentencepiece_model_pb2_new

    # transformers reads spiece.model through sentencepiece's own generated protobuf module, which the
    # venv's protobuf runtime refuses (gencode 7.x > runtime 6.x); transformers ships an equivalent
    # module for protobuf >= 4, used here instead. The conversion itself is transformers' own.
    original = convert.import_protobuf
    convert.import_protobuf = lambda error_message="": sentencepiece_model_pb2_new
    try:
        tokenizer = T5Tokenizer.from_pretrained(str(ASSETS / "t5"))
    finally:
        convert.import_protobuf = original
    assert isinstance(tokenizer, TokenizersBackend)
    assert len(tokenizer) == 32100 and tokenizer.eos_token_id == 1 and tokenizer.pad_token_id == 0
    return tokenizer


WORDS = ("a photo of the cat dog astronaut riding horse on mars portrait woman man city night neon light "
         "cinematic 4k highly detailed oil painting watercolor studio ghibli style sunset over mountains "
         "lake reflection bokeh 35mm film grain masterpiece best quality ultra-detailed octane render "
         "isn't don't we're they've i'm you'll he'd it's O'Neil rock'n'roll").split()

# Hard cases chosen by hand: what each exercises is in the comment beside it.
FIXED = [
    "", " ", "   \t\n  ", "\n", "\u3000\u00a0\u2003",  # empty and whitespace only
    "a photo of a cat", "A PHOTO OF A CAT", "Hello, World!", "hello world.",
    "It's isn't we're they've I'm you'll he'd 'S 'T 'RE", "''s '''t 'sam ''", "rock'n'roll O'Neil's",
    "!!!???...,,,;;;:::", "....!!!!????", "a--b__c~~d", "(((masterpiece))), [best quality:1.2], {cat|dog}",
    "1234567890", "3.14159 1,000,000 -42 +7 1e10 0x1F", "12th 2nd 3rd 4k 8K 1080p", "²³¹ ½ ¼ ① ⑩ Ⅻ ٣ ४ ൬",
    "café naïve résumé Ångström", unicodedata.normalize("NFD", "café naïve résumé Ångström"),
    "e\u0301 e\u0301\u0302 x\u0301 \u0301a", "Ａ１２３ ＡＢＣ ｅ\u0301 ﬁ ﬂ ﬀ ™ ℃ ㎏", "İstanbul ΣΑΣ ς ß ẞ ǅ Ǆ ǈ",
    "日本語のテキスト 東京タワー", "中文提示词：一只猫在月亮上", "한국어 프롬프트 고양이", "ﾊﾝｶｸ ｶﾀｶﾅ",
    "Привет мир, КОТ", "Ελληνικά ΚΕΙΜΕΝΟ", "עברית טקסט", "العربية نص", "हिन्दी पाठ क्ष", "ภาษาไทย",
    "🐱 cat 🐶🐕‍🦺 👨‍👩‍👧‍👦 👍🏽 🏳️‍🌈 🇯🇵🇺🇸 ❤️ ✨🔥", "emoji👩🏾‍🚀astronaut", "#️⃣ 1️⃣ ©️ ®️",
    "<|startoftext|>", "<|endoftext|>", "a<|endoftext|>b", "<|STARTOFTEXT|> <|EndOfText|>",
    "x<|startoftext|>y", "!!<|startoftext|>", "<|startoftext|><|endoftext|><|startoftext|>",
    "</s>", "<pad> <unk> <extra_id_0> <extra_id_99>", "x</s>y<pad>z", "<extra_id_100> <extra_id_-1>", "＜/s＞",
    "tab\tseparated\tvalues", "line one\nline two\r\nline three\rfour", "\x00\x01\x07\x1b[0m\x7f\x85\x9f",
    "zero\u200bwidth\u200cjoiner\u200dmark\u2060\ufeff", "soft\u00adhyphen", "\u2028\u2029separators",
    "\u2581already\u2581metaspace \u2581 \u2581\u2581x", "a\u0308\u0304 o\u0338 \u0041\u030a",
    "\ud55c\u1100\u1161\u11a8 \u1100\u1161", "𝐁𝐨𝐥𝐝 𝕯𝖔𝖚𝖇𝖑𝖊 𝓢𝓬𝓻𝓲𝓹𝓽", "ⓐⓑⓒ ⒜⒝ ⑴⑵",
    "a\u035e\u0899 e\u0301\u1df6 x\u1aca\u0344 \u0345\u1df9",  # marks newer than the reference's NFC data
    "\U0001F9D1\u200D\U0001F3A8", "a" * 300, "ab" * 200 + " " + "!" * 300, "x y " * 120,
    " leading and trailing spaces   ", "multiple     spaces\t\t\tbetween",
]


def long_prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


# Code point ranges the random draws take from. Outside them (and inside, for code points that ICU 72
# and the reference's Unicode tables disagree on) the C++ side can differ: see docs/architecture.md.
BLOCKS = [
    (0x20, 0x7E), (0xA0, 0x24F), (0x250, 0x2FF), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
    (0x530, 0x58F), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x10A0, 0x10FF),
    (0x1100, 0x11FF), (0x1E00, 0x1EFF), (0x1F00, 0x1FFF), (0x2000, 0x206F), (0x2070, 0x209F),
    (0x20A0, 0x20CF), (0x2100, 0x218F), (0x2190, 0x21FF), (0x2200, 0x22FF), (0x2460, 0x24FF),
    (0x2500, 0x27BF), (0x3000, 0x303F), (0x3040, 0x30FF), (0x3130, 0x318F), (0x3200, 0x33FF),
    (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xF900, 0xFAFF), (0xFB00, 0xFB4F), (0xFE30, 0xFE4F),
    (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF), (0x1F000, 0x1F0FF), (0x1F100, 0x1F1FF), (0x1F300, 0x1F64F),
    (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF), (0x1FA70, 0x1FAFF), (0x20000, 0x2A6DF),
]
SPECIAL_CHARS = ["\u200d", "\ufe0f", "\u0301", "\u0308", "\U0001F3FD", "\t", "\n", " ", "  ", "'", "’", "<", ">",
                 "|", "/", "_", "\u00a0", "\u3000", "\x0b", "\x1f"]


def random_char(rng: random.Random) -> str:
    while True:
        lo, hi = rng.choice(BLOCKS)
        c = chr(rng.randint(lo, hi))
        # Only code points that Unicode 14 (this Python's unicodedata) already had.
        if unicodedata.category(c) not in ("Cn", "Cs", "Co"):
            return c


def random_prompt(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:  # caption-like text with random case, punctuation and numbers
        parts = []
        for _ in range(rng.randint(1, 40)):
            word = rng.choice(WORDS)
            word = rng.choice([word, word.upper(), word.capitalize()])
            parts.append(word + rng.choice(["", "", "", ",", ".", "!", "'s", " 42", "...", ":1.2)"]))
        return rng.choice([" ", "  ", ", ", "\n"]).join(parts)
    if kind < 0.75:  # random code points from many scripts with whitespace and joiners
        return "".join(random_char(rng) if rng.random() < 0.8 else rng.choice(SPECIAL_CHARS)
                       for _ in range(rng.randint(1, 60)))
    if kind < 0.9:  # a mix, sometimes decomposed
        text = " ".join(rng.choice(WORDS) + "".join(random_char(rng) for _ in range(rng.randint(0, 3)))
                        for _ in range(rng.randint(1, 20)))
        return unicodedata.normalize(rng.choice(["NFC", "NFD", "NFKD"]), text)
    return long_prompt(rng, rng.choice([80, 200, 1000]))  # truncation of both tokenizers


def run_tool(tool: str, requests: list[dict]) -> list[dict]:
    stdin = "".join(json.dumps(r) + "\n" for r in requests)
    result = subprocess.run([tool], input=stdin, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == len(requests)
    return answers


def test_tokenizers_match_transformers(tokenize_tool, clip_reference, t5_reference):
    seed = int(os.environ.get("FLUXTRAIN_TOKENIZER_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    prompts = list(FIXED) + [long_prompt(rng, 1000) for _ in range(4)]
    prompts += [random_prompt(rng) for _ in range(RANDOM_PROMPTS)]
    assert len(prompts) >= 200

    requests = [{"text": p, "max_length": n} for p in prompts for n in T5_LENGTHS]
    answers = run_tool(tokenize_tool, requests)

    clip_77 = clip_reference(prompts, padding="max_length", max_length=77, truncation=True)["input_ids"]
    clip_all = clip_reference(prompts)["input_ids"]
    t5_all = t5_reference(prompts)["input_ids"]
    t5_cut = {n: t5_reference(prompts, padding="max_length", max_length=n, truncation=True) for n in T5_LENGTHS}

    mismatches = []
    for i, prompt in enumerate(prompts):
        for j, n in enumerate(T5_LENGTHS):
            got = answers[2 * i + j]
            expected = {"clip": clip_77[i], "clip_untruncated": clip_all[i], "t5": t5_cut[n]["input_ids"][i],
                        "t5_mask": t5_cut[n]["attention_mask"][i], "t5_untruncated": t5_all[i]}
            for key, value in expected.items():
                if got.get(key) != value:
                    mismatches.append(f"{key} (T5 max_length {n}) for {prompt[:200]!r}:\n"
                                      f"  transformers {value[:100]}\n  fluxtrain    {got.get(key, got)!s:.800}")
    assert not mismatches, (f"{len(mismatches)} mismatches over {len(prompts)} prompts (seed {seed}; "
                            f"FLUXTRAIN_TOKENIZER_SEED={seed} replays them):\n" + "\n".join(mismatches[:10]))
    # What the fixed cases must have reached: truncation on both sides and the Flux lengths.
    assert max(len(ids) for ids in clip_all) > 77 and max(len(ids) for ids in t5_all) > 512
    print(f"{len(prompts)} prompts (seed {seed}), {len(requests)} requests: all ids equal")
