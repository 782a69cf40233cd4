"""Writes llama3_hf_fixture.jsonl: seeded random strings and their Llama-3 token ids as computed by
Hugging Face `tokenizers` (the reference implementation of tokenizer.json), for
tokenizer_llama3_diff_test.

Regenerate (needs only PyPI's tokenizers, in a throwaway venv; the product does not use it):
  python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install tokenizers==0.21.1
  /tmp/hfvenv/bin/python make_llama3_fixture.py ../../../../shared/tokenizers/llama3/tokenizer.json
"""
import json
import random
import sys

from tokenizers import Tokenizer

WORDS = ["the", "Hello", " world", "ing", "I'm", "don't", "YOU'LL", "they're", "it's", "'S",
         "http://x.y/z?q=1", "<|eot_id|>", "<|begin_of_text|>", "<|eot", "def f(x):", "a.b"]
PUNCT = list(".,!?;:()[]{}\"'`#@$%^&*-_+=<>/\\|~") + ["...", "--", "==", "->", "```"]
SPACES = [" ", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n", "\n ", "\f", "\v",
          "\u00a0", "\u3000", "\u2028", "\u0085", "\u2009"]


def rand_char(rng, lo, hi):
    cp = rng.randint(lo, hi)
    if 0xD800 <= cp <= 0xDFFF:
        cp = 0xFFFD
    return chr(cp)


def run(rng):
    n = rng.randint(1, 6)
    kind = rng.randint(0, 11)
    if kind in (0, 1):
        return "".join(rng.choice(WORDS) for _ in range(n))
    if kind == 2:
        return "".join(rand_char(rng, ord("a"), ord("z")) for _ in range(n))
    if kind == 3:
        return "".join(rng.choice(SPACES) for _ in range(n))
    if kind == 4:
        return "".join(rand_char(rng, ord("0"), ord("9")) for _ in range(rng.randint(1, 9)))
    if kind == 5:
        return "".join(rng.choice(PUNCT) for _ in range(n))
    if kind == 6:  # Cyrillic, Greek, Latin-1, combining marks
        ranges = [(0x430, 0x44F), (0x3B1, 0x3C9), (0xC0, 0xFF), (0x300, 0x36F)]
        return "".join(rand_char(rng, *rng.choice(ranges)) for _ in range(n))
    if kind == 7:  # CJK, kana, Hangul
        ranges = [(0x4E00, 0x9FFF), (0x3040, 0x30FF), (0xAC00, 0xD7A3)]
        return "".join(rand_char(rng, *rng.choice(ranges)) for _ in range(n))
    if kind == 8:  # Arabic, Devanagari, Thai, and their digits
        ranges = [(0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x660, 0x669)]
        return "".join(rand_char(rng, *rng.choice(ranges)) for _ in range(n))
    if kind == 9:  # emoji with ZWJ / VS16
        out = ""
        for _ in range(n):
            out += rand_char(rng, 0x1F300, 0x1FAFF)
            if rng.random() < 0.25:
                out += "\u200d"
            if rng.random() < 0.25:
                out += "\ufe0f"
        return out
    if kind == 10:
        return "".join(rand_char(rng, 0xA0, rng.choice([0xFFFF, 0x10FFFF])) for _ in range(n))
    return "".join(rand_char(rng, 1, 0x1F) for _ in range(n))


def main():
    tok = Tokenizer.from_file(sys.argv[1])
    rng = random.Random(20240607)
    with open("llama3_hf_fixture.jsonl", "w", encoding="utf-8") as f:
        for _ in range(2000):
            text = "".join(run(rng) for _ in range(rng.randint(0, 6)))
            ids = tok.encode(text, add_special_tokens=False).ids
            f.write(json.dumps({"text": text, "ids": ids}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
