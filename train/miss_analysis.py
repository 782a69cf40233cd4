"""Where an exported longctx model's answers go wrong: dense exact match of single-fact and needle
questions by how many facts of the document share the asked fact's attribute (k), against the
1/k a model would score by finding the attribute's facts and picking one at random, and how many
wrong answers are another of those facts' answers (a binding miss: the right attribute, the wrong
entity).

Usage: python train/miss_analysis.py --model DIR [--tokenizer DIR] [--task-variant V]
           [--answer-format F] [--length 1024] [--docs 24]
--model holds config.json and model.safetensors (a train.py export), --tokenizer (default: the
model's folder) the tokenizer.model it was trained with (the one train/tokenizer.py makes for
the same --task-variant). Prints one markdown table.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import tasks  # noqa: E402
import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="exported model with its tokenizer")
    ap.add_argument("--tokenizer", default="", help="folder of tokenizer.model (default --model)")
    ap.add_argument("--task-variant", choices=tasks.VARIANTS, default=tasks.MODEL_VARIANT)
    ap.add_argument("--answer-format", choices=tasks.ANSWER_FORMATS,
                    default=tasks.MODEL_ANSWER_FORMAT)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--docs", type=int, default=24)
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = train.load_exported(a.model, device)
    enc = data.Encoder(os.path.join(a.tokenizer or a.model, "tokenizer.model"))
    max_tokens = train.ANSWER_TOKENS[a.answer_format]
    right = collections.Counter()
    asked = collections.Counter()
    binding = collections.Counter()  # wrong, and another same-attribute fact's answer
    for doc, ctx in data.eval_items(enc, a.length, a.docs, 8, a.task_variant):
        with torch.no_grad():
            _, past = model(torch.tensor([ctx], device=device))
        for q in doc.questions:
            if q.kind == "twohop":
                continue
            fact = doc.facts[q.facts[0]]
            peers = [i for i, g in enumerate(doc.facts)
                     if g.attribute == fact.attribute and i != q.facts[0]]
            k = len(peers) + 1
            want = tasks.answer_text(doc, q, a.answer_format)
            with torch.no_grad():
                ids = train.answer(model, past, len(ctx), enc(tasks.query_text(q.question)),
                                   device, max_tokens)
            got = enc.decode(ids).strip()
            asked[k] += 1
            if got == want:
                right[k] += 1
                continue
            others = {doc.facts[i].value if a.answer_format == "value"
                      else tasks.restatement(doc, i) for i in peers}
            binding[k] += got in others
    print(f"{a.model}: {a.task_variant} documents of {a.length} tokens, {a.docs} documents")
    print("| facts of the asked attribute (k) | questions | exact match | 1/k | "
          "wrong: another such fact's answer |")
    print("| --- | --- | --- | --- | --- |")
    for k in sorted(asked):
        wrong = asked[k] - right[k]
        print(f"| {k} | {asked[k]} | {right[k] / asked[k]:.2f} | {1 / k:.2f} | "
              f"{binding[k]}/{wrong} |")


if __name__ == "__main__":
    main()
