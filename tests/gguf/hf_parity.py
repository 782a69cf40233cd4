#!/usr/bin/env python3
"""Compares Squeeze's GGUF path with Hugging Face transformers loading the same GGUF file.

Not run by CTest (torch and transformers are too heavy for CI). Set up the oracle once with
tests/gguf/hf_parity_setup.sh (Debian's CPU torch 1.13 + a venv with transformers 4.46.3, gguf
0.10.0), build sqz-gguf-run, then:

  .venv-hf/bin/python tests/gguf/hf_parity.py \
      --model ~/.cache/squeeze/models/SmolLM2-135M-Instruct.Q4_1.gguf \
      --cli build/tests/gguf/sqz-gguf-run [--json-out results.json]

Checks, each printed with its numbers; exit status 1 if any fails:

1. Tokenization: 2,000 seeded random strings (mixed scripts, whitespace runs, tabs, CR/LF, emoji,
   digits, special-token text, random code points) encoded by our tokenizer
   (sqz-gguf-run --tokenize-jsonl) and by transformers, encode(s, add_special_tokens=False).
   Two transformers tokenizers are compared:
   - "hf-gguf": what AutoTokenizer.from_pretrained(dir, gguf_file=...) builds. transformers'
     GGUF converter gives every "gpt2" model a plain ByteLevel pre-tokenizer and ignores
     tokenizer.ggml.pre; SmolLM2's file says pre = "smollm", whose tokenizer.json runs
     Digits(individual_digits=True) before ByteLevel (so does llama.cpp for "smollm", and so do
     we). It therefore differs from the real tokenizer wherever whitespace precedes a digit
     ("x  42": hf-gguf ["x", "Ġ", "Ġ", "4", "2"], the real one ["x", "ĠĠ", "4", "2"]).
   - "reference": the same transformers tokenizer (same vocabulary, merges, added tokens) with
     SmolLM2's tokenizer.json pre-tokenizer put back (see reference_pre_tokenizer), or, with
     --hf-tokenizer DIR, the tokenizer.json found in DIR (a local copy of the original; this
     script never downloads anything).
   Pass: ours == reference on every string, and every hf-gguf difference is one of the
   pre-tokenizer kind (ours == reference there, and the string contains a digit).

2. Logits and greedy decoding, on 5 prompts (token ids from the reference tokenizer, fed to both):
   transformers greedy-decodes `--steps` tokens (pure argmax, EOS not special, KV cache). Then
   prompt + those tokens go through both models in one forward pass (our CPU runtime via
   sqz-gguf-run --prompt-ids --dump-logits, fp32; transformers fp32), and at every position the
   relative L2 error |ours - hf|_2 / |hf|_2 must be <= --tol (1e-3). Greedy agreement: our argmax
   at the last prompt position and each generated position must equal transformers' token (so
   our greedy run, fed the same tokens, would produce the same ones); and our own free-running
   greedy generation (sqz-gguf-run --prompt-ids -n steps --ignore-eos, KV-cached decode steps)
   must print exactly the text of transformers' tokens (special tokens left out: the CLI prints
   text, not ids, and control tokens have none).

transformers runs on Debian's torch, which calls the system libblas.so.3 (the slow reference BLAS
unless chosen otherwise): this script re-executes itself with OpenBLAS's copy first on
LD_LIBRARY_PATH when Debian's libopenblas0-pthread is installed (hf_parity_setup.sh installs it).

transformers 4.46.3 loads tied-embedding GGUF llama models wrongly: it sets
tie_word_embeddings=False and leaves lm_head randomly initialized when the file has no
output.weight (fixed upstream after 4.46 by "Fix tie_word_embeddings handling for GGUF models").
SmolLM2 ties its embeddings, so this script passes tie_word_embeddings=True whenever the file has
no output.weight, and checks that lm_head then shares token_embd's weights.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

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

# The five prompts of the logits check: (name, chat messages or None, raw text or None).
PROMPTS = [
    ("chat-capital", [{"role": "user", "content": "What is the capital of France?"}], None),
    ("story", None, "Once upon a time, in a small village by the sea,"),
    ("code", None, "def fibonacci(n):\n    if n < 2:\n        return n\n"),
    ("chat-system-digits", [
        {"role": "system", "content": "You are a careful math tutor."},
        {"role": "user", "content": "What is 17 * 23? Then list three primes above 100."}], None),
    ("long-repeat", None, " ".join(["The quick brown fox jumps over the lazy dog."] * 20)),
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


def run(cmd, capture=False):
    shown = [c if len(c) < 80 else c[:60] + f"...({len(c)} chars)" for c in cmd]
    print("+ " + " ".join(shown), file=sys.stderr)
    r = subprocess.run(cmd, check=True, stdout=subprocess.PIPE if capture else None)
    return r.stdout.decode("utf-8", errors="surrogateescape") if capture else None


def reference_pre_tokenizer():
    """SmolLM2's tokenizer.json pre-tokenizer (what tokenizer.ggml.pre = "smollm" stands for)."""
    from tokenizers import pre_tokenizers
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


def gguf_facts(path):
    """(tokenizer.ggml.pre, whether the file has output.weight) read with PyPI's gguf."""
    import gguf
    r = gguf.GGUFReader(path)
    f = r.fields.get("tokenizer.ggml.pre")
    pre = bytes(f.parts[f.data[0]]).decode() if f is not None else ""
    return pre, any(t.name == "output.weight" for t in r.tensors)


def load_tokenizers(args, d, f, pre):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    hf_gguf = AutoTokenizer.from_pretrained(d, gguf_file=f)
    if args.hf_tokenizer:
        path = args.hf_tokenizer
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            sys.exit(f"hf_parity: --hf-tokenizer: no tokenizer.json at {path} (a local copy is "
                     "needed; nothing is downloaded)")
        ref = PreTrainedTokenizerFast(tokenizer_file=path)
        ref_name = f"tokenizer.json from {path}"
    else:
        if pre != "smollm":
            sys.exit(f"hf_parity: tokenizer.ggml.pre is '{pre}'; the reference pre-tokenizer here "
                     "is SmolLM2's ('smollm'): give --hf-tokenizer DIR for other models")
        ref = AutoTokenizer.from_pretrained(d, gguf_file=f)
        ref.backend_tokenizer.pre_tokenizer = reference_pre_tokenizer()
        ref_name = "hf-gguf with SmolLM2's pre-tokenizer (Digits individual + ByteLevel)"
    return hf_gguf, ref, ref_name


def check_tokenization(args, hf_gguf, ref, ref_name, work, results):
    strings = random_strings(args.strings, args.seed)
    inp, out = os.path.join(work, "strings.jsonl"), os.path.join(work, "ids.jsonl")
    with open(inp, "w") as fh:
        for s in strings:
            fh.write(json.dumps(s) + "\n")
    run([args.cli, "--model", args.model, "--tokenize-jsonl", inp, out])
    with open(out) as fh:
        ours = [json.loads(line) for line in fh]
    assert len(ours) == len(strings), (len(ours), len(strings))
    n_ref = n_hf = unexplained_hf = 0
    shown_ref = shown_hf = 0
    for s, o in zip(strings, ours):
        r = ref.encode(s, add_special_tokens=False)
        h = hf_gguf.encode(s, add_special_tokens=False)
        if o != r:
            n_ref += 1
            if shown_ref < 10:
                shown_ref += 1
                print(f"MISMATCH vs reference {s!r}\n  ours {o}\n  ref  {r}")
        if o != h:
            n_hf += 1
            explained = o == r and any(c.isnumeric() for c in s)
            unexplained_hf += not explained
            if shown_hf < 3 or (not explained and shown_hf < 10):
                shown_hf += 1
                print(f"differs from hf-gguf ({'pre-tokenizer' if explained else 'UNEXPLAINED'}) "
                      f"{s!r}\n  ours    {ref.convert_ids_to_tokens(o)}\n"
                      f"  hf-gguf {hf_gguf.convert_ids_to_tokens(h)}")
    example = "x  42"
    print(f"example {example!r}: hf-gguf "
          f"{hf_gguf.convert_ids_to_tokens(hf_gguf.encode(example, add_special_tokens=False))}, "
          f"reference {ref.convert_ids_to_tokens(ref.encode(example, add_special_tokens=False))}")
    n = len(strings)
    print(f"tokenization vs reference ({ref_name}): {n - n_ref}/{n} strings equal")
    print(f"tokenization vs hf-gguf: {n - n_hf}/{n} strings equal; of the {n_hf} differences "
          f"{n_hf - unexplained_hf} are transformers ignoring tokenizer.ggml.pre (ours == "
          f"reference, digits present), {unexplained_hf} unexplained")
    results["tokenization"] = {
        "strings": n, "seed": args.seed, "reference": ref_name, "mismatches_vs_reference": n_ref,
        "mismatches_vs_hf_gguf": n_hf, "hf_gguf_unexplained": unexplained_hf}
    return n_ref == 0 and unexplained_hf == 0


def hf_greedy(model, ids, steps):
    """`steps` tokens by pure argmax with transformers' KV cache (EOS not special)."""
    import torch
    out_tokens = []
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        for i in range(steps):
            nxt = int(out.logits[0, -1].argmax())
            out_tokens.append(nxt)
            if i + 1 < steps:
                out = model(torch.tensor([[nxt]]), past_key_values=out.past_key_values,
                            use_cache=True)
    return out_tokens


def check_logits(args, ref, model, work, results):
    import torch
    ok = True
    results["prompts"] = []
    for i, (name, messages, text) in enumerate(PROMPTS):
        if messages is not None:
            text = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = ref.encode(text, add_special_tokens=False)
        p, steps = len(ids), args.steps
        t0 = time.time()
        gen = hf_greedy(model, ids, steps)
        full = ids + gen
        with torch.no_grad():
            hf = model(torch.tensor([full])).logits[0].double().numpy()
        hf_s = time.time() - t0
        # transformers' own consistency: its one-pass argmax reproduces its cached greedy run.
        hf_self = int((hf[p - 1:p - 1 + steps].argmax(1) == np.array(gen)).sum())

        out = os.path.join(work, f"logits{i}.npy")
        t0 = time.time()
        run([args.cli, "--model", args.model, "--prompt-ids", ",".join(map(str, full)),
             "--dump-logits", out])
        ours = np.load(out).astype(np.float64)
        ours_s = time.time() - t0
        assert ours.shape == hf.shape, (ours.shape, hf.shape)
        rel = np.linalg.norm(ours - hf, axis=1) / np.linalg.norm(hf, axis=1)
        maxabs = np.abs(ours - hf).max(axis=1) / np.abs(hf).max(axis=1)
        ours_next = ours[p - 1:p - 1 + steps].argmax(1)
        agree = ours_next == np.array(gen)
        first_diverge = int(np.argmin(agree)) if not agree.all() else -1

        # Our free-running greedy generation (decode steps through our KV cache).
        printed = run([args.cli, "--model", args.model, "--prompt-ids", ",".join(map(str, ids)),
                       "-n", str(steps), "--ignore-eos"], capture=True)
        printed = printed[:-1] if printed.endswith("\n") else printed
        hf_text = ref.decode(gen, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        # sqz-gguf-run streams the text of normal tokens only (control tokens such as <|im_end|>
        # print nothing), so its output is compared with transformers' text without them.
        hf_plain = ref.decode(gen, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        free_ok = printed == hf_plain

        good = bool((rel <= args.tol).all() and agree.all() and free_ok)
        ok &= good
        print(f"prompt {i} {name}: {p} prompt + {steps} generated tokens; rel L2 max "
              f"{rel.max():.2e} mean {rel.mean():.2e} (tol {args.tol:.0e}; max-abs/max "
              f"{maxabs.max():.2e}); greedy {int(agree.sum())}/{steps} equal"
              f"{'' if first_diverge < 0 else f' (first difference at step {first_diverge})'}; "
              f"free-running text {'equal' if free_ok else 'DIFFERENT'}; "
              f"hf self-consistency {hf_self}/{steps}; hf {hf_s:.1f} s, ours {ours_s:.1f} s "
              f"-> {'OK' if good else 'FAIL'}")
        print(f"  generated: {hf_text!r}")
        if not free_ok:
            print(f"  ours printed: {printed!r}")
        if (rel > args.tol).any():
            worst = int(rel.argmax())
            print(f"  worst position {worst} (token {full[worst]}), "
                  f"{int((rel > args.tol).sum())} positions over tol")
        results["prompts"].append({
            "name": name, "prompt_tokens": p, "generated": steps,
            "rel_l2_max": float(rel.max()), "rel_l2_mean": float(rel.mean()),
            "rel_l2_prompt_max": float(rel[:p].max()), "rel_l2_generated_max": float(rel[p:].max()),
            "maxabs_rel_max": float(maxabs.max()), "greedy_equal": int(agree.sum()),
            "free_running_text_equal": free_ok, "hf_self_consistent": hf_self,
            "generated_text": hf_text})
    return ok


OPENBLAS_DIR = "/usr/lib/x86_64-linux-gnu/openblas-pthread"


def reexec_with_openblas():
    """Restarts this script with OpenBLAS's libblas.so.3 first on the library path, once."""
    paths = os.environ.get("LD_LIBRARY_PATH", "")
    if (os.path.exists(os.path.join(OPENBLAS_DIR, "libblas.so.3"))
            and OPENBLAS_DIR not in paths.split(":")):
        env = dict(os.environ, LD_LIBRARY_PATH=OPENBLAS_DIR + (":" + paths if paths else ""))
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


def main():
    reexec_with_openblas()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the .gguf file")
    ap.add_argument("--cli", required=True, help="path to sqz-gguf-run")
    ap.add_argument("--strings", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=20251129)
    ap.add_argument("--tol", type=float, default=1e-3, help="relative L2 bound per position")
    ap.add_argument("--steps", type=int, default=64, help="greedy tokens per prompt")
    ap.add_argument("--skip-logits", action="store_true")
    ap.add_argument("--skip-tokenization", action="store_true")
    ap.add_argument("--hf-tokenizer", default="",
                    help="local directory or tokenizer.json of the original tokenizer to use as "
                         "the reference (default: hf-gguf with SmolLM2's pre-tokenizer)")
    ap.add_argument("--no-tie-fix", action="store_true",
                    help="load the model as transformers 4.46 does on its own (random lm_head for "
                         "tied-embedding files): a negative control, the logits check must fail")
    ap.add_argument("--json-out", default="", help="write the numbers here as JSON")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    args.model = os.path.abspath(os.path.expanduser(args.model))
    d, f = os.path.split(args.model)
    pre, has_output = gguf_facts(args.model)
    results = {"model": args.model, "torch": torch.__version__,
               "transformers": transformers.__version__, "tokenizer_ggml_pre": pre,
               "ld_library_path": os.environ.get("LD_LIBRARY_PATH", ""),
               "torch_threads": torch.get_num_threads()}
    hf_gguf, ref, ref_name = load_tokenizers(args, d, f, pre)
    ok = True
    with tempfile.TemporaryDirectory() as work:
        if not args.skip_tokenization:
            ok &= check_tokenization(args, hf_gguf, ref, ref_name, work, results)
        if not args.skip_logits:
            # transformers 4.46 ignores tied embeddings in GGUF files (see the module docstring).
            extra = {} if has_output or args.no_tie_fix else {"tie_word_embeddings": True}
            model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32,
                                                         **extra).eval()
            if not has_output and not args.no_tie_fix:
                assert (model.lm_head.weight.data_ptr() ==
                        model.model.embed_tokens.weight.data_ptr()), "lm_head is not tied"
            ok &= check_logits(args, ref, model, work, results)
    results["pass"] = bool(ok)
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(results, fh, indent=1, ensure_ascii=False)
    print("hf_parity: " + ("PASS" if ok else "FAIL"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
