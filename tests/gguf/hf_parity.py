#!/usr/bin/env python3
"""Compares Squeeze's GGUF path with Hugging Face transformers loading the same GGUF file.

Not run by CTest (this machine has no torch / transformers). Run it where they exist:

  pip install torch transformers==4.46.3 gguf==0.10.0 numpy
  python tests/gguf/hf_parity.py \
      --model ~/.cache/squeeze/models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --cli build/tests/gguf/sqz-gguf-run \
      [--hf-tokenizer HuggingFaceTB/SmolLM2-135M-Instruct]

--hf-tokenizer compares tokenization with the model's original tokenizer.json (a Hub id or a local
directory) instead of the one transformers rebuilds from the GGUF metadata: transformers' GGUF
tokenizer converter gives "gpt2" files a plain ByteLevel pre-tokenizer and ignores
tokenizer.ggml.pre, so it does not split digits one by one as SmolLM2's real tokenizer (and
llama.cpp, and ours, from pre = "smollm") do. Mismatches only on digit runs without the flag point
there, not at us.

Checks, each printed with its numbers; exit status 1 if any fails:
  1. tokenization: 2,000 seeded random strings (mixed scripts, whitespace runs, tabs, newlines,
     emoji, digits, special-token text) encoded by our tokenizer (sqz-gguf-run --tokenize-jsonl)
     and by transformers' tokenizer built from the GGUF (AutoTokenizer, gguf_file=...),
     encode(s, add_special_tokens=False): every id list must be equal;
  2. logits: for several prompts (token ids from transformers' tokenizer, fed to both), our fp32
     CPU logits at every position (sqz-gguf-run --prompt-ids --dump-logits) against transformers'
     fp32 forward pass: max |diff| <= tol * max |logit| at every position (default tol 1e-3;
     both dequantize the same blocks exactly, so only summation order differs), and equal argmax
     wherever transformers' top-2 margin exceeds that tolerance.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import numpy as np

PIECES = [
    "a", "Z", "the", "The", " of", "hello", "world", "Paris", "don't", "I'm", "we'll", "it's",
    " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000",
    "0", "7", "42", "123456", "3.14159", "1,000", "-5", "2024-11-29",
    "é", "naïve", "Straße", "Ελληνικά", "русский", "中文", "日本語", "한국어", "עברית",
    "العربية", "हिन्दी", "ไทย", "😀", "👍🏽", "🇫🇷", "👨‍👩‍👧", "∑", "→", "—", "…", "«", "»",
    "(", ")", "[", "]", "{", "}", "<", ">", "#", "@", "$", "%", "^", "&", "*", "_", "=", "+",
    "\\", "/", "|", "~", "`", "'", '"', ";", ":", ",", ".", "!", "?",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<|im_start", "im_end|>",
    "def f(x):\n    return x", "</s>", "<s>", "[INST]",
]


def random_strings(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 30)
        s = "".join(rng.choice(PIECES) for _ in range(k))
        if rng.random() < 0.2:  # raw random code points, including rare planes
            s += "".join(chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF),
                                         rng.randint(0x1F300, 0x1FAFF)])) for _ in range(5))
        out.append(s)
    return out


def run(cmd):
    print("+ " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)


def check_tokenization(args, hf_tok, work):
    strings = random_strings(args.strings, args.seed)
    inp, out = os.path.join(work, "strings.jsonl"), os.path.join(work, "ids.jsonl")
    with open(inp, "w") as f:
        for s in strings:
            f.write(json.dumps(s) + "\n")
    run([args.cli, "--model", args.model, "--tokenize-jsonl", inp, out])
    with open(out) as f:
        ours = [json.loads(line) for line in f]
    assert len(ours) == len(strings)
    bad = 0
    for s, o in zip(strings, ours):
        h = hf_tok.encode(s, add_special_tokens=False)
        if h != o:
            bad += 1
            if bad <= 10:
                print(f"MISMATCH {s!r}\n  ours {o}\n  hf   {h}")
    print(f"tokenization: {len(strings) - bad}/{len(strings)} strings equal")
    return bad == 0


def check_logits(args, hf_tok, hf_model, work):
    import torch
    chat = hf_tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                      tokenize=False, add_generation_prompt=True)
    prompts = [
        chat,
        "Once upon a time, in a small village by the sea,",
        "def fibonacci(n):\n    if n < 2:\n        return n\n",
        " ".join(["The quick brown fox jumps over the lazy dog."] * 20),  # ~200 tokens
    ]
    ok = True
    for i, text in enumerate(prompts):
        ids = hf_tok.encode(text, add_special_tokens=False)
        out = os.path.join(work, f"logits{i}.npy")
        run([args.cli, "--model", args.model, "--prompt-ids", ",".join(map(str, ids)),
             "--dump-logits", out])
        ours = np.load(out).astype(np.float64)
        with torch.no_grad():
            hf = hf_model(torch.tensor([ids])).logits[0].double().numpy()
        assert ours.shape == hf.shape, (ours.shape, hf.shape)
        scale = np.abs(hf).max(axis=1)
        rel = np.abs(ours - hf).max(axis=1) / scale
        top2 = np.sort(hf, axis=1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) > args.tol * scale
        argmax_ok = (ours.argmax(1) == hf.argmax(1)) | ~decisive
        good = bool((rel <= args.tol).all() and argmax_ok.all())
        ok &= good
        print(f"logits prompt {i} ({len(ids)} tokens): max rel diff {rel.max():.2e} "
              f"(tol {args.tol:.0e}), argmax equal at {int((ours.argmax(1) == hf.argmax(1)).sum())}"
              f"/{len(ids)} positions -> {'OK' if good else 'FAIL'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the .gguf file")
    ap.add_argument("--cli", required=True, help="path to sqz-gguf-run")
    ap.add_argument("--strings", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=20251129)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--skip-logits", action="store_true")
    ap.add_argument("--hf-tokenizer", default="",
                    help="reference tokenizer (Hub id or directory); default: from the GGUF")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    d, f = os.path.split(os.path.abspath(os.path.expanduser(args.model)))
    args.model = os.path.join(d, f)
    hf_tok = (AutoTokenizer.from_pretrained(args.hf_tokenizer) if args.hf_tokenizer
              else AutoTokenizer.from_pretrained(d, gguf_file=f))
    ok = True
    with tempfile.TemporaryDirectory() as work:
        ok &= check_tokenization(args, hf_tok, work)
        if not args.skip_logits:
            hf_model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f,
                                                            torch_dtype=torch.float32).eval()
            ok &= check_logits(args, hf_tok, hf_model, work)
    print("hf_parity: " + ("PASS" if ok else "FAIL"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
