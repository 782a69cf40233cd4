"""Writes held-out evaluation documents as JSON lines for tools/longctx_eval (sqz-longctx-eval).

Each line: {"length": L, "seed": S, "kind": "facts"|"needle", "context_tokens": N,
            "document": "...", "questions": [{"question", "answer", "kind", "depth"}, ...]}
Documents are the ones train/train.py evaluates on (data.eval_items: seeds
tasks.heldout_seed(L, i), context = <s> + document <= L - 64 tokens), so PyTorch and the C++
runtime answer the same questions.

Usage: python train/eval_set.py --tokenizer models/longctx --lengths 1024,4096,16384 --docs 8
           [--questions 8] [--first 0] --out eval.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data  # noqa: E402
import tasks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description="held-out evaluation documents as JSON lines")
    ap.add_argument("--tokenizer", required=True, help="dir with tokenizer.model")
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    ap.add_argument("--docs", type=int, default=8, help="documents per length")
    ap.add_argument("--first", type=int, default=0,
                    help="skip the first documents of each length (extending an earlier set)")
    ap.add_argument("--questions", type=int, default=8, help="questions per document")
    ap.add_argument("--task-variant", choices=tasks.VARIANTS, default=tasks.MODEL_VARIANT,
                    help="the documents' entities and facts (tasks.VARIANTS)")
    ap.add_argument("--answer-format", choices=tasks.ANSWER_FORMATS,
                    default=tasks.MODEL_ANSWER_FORMAT,
                    help="the expected answers: values, or the facts restated "
                         "(tasks.ANSWER_FORMATS; sqz-longctx-eval gives each question the tokens its "
                         "answer needs)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    enc = data.Encoder(os.path.join(a.tokenizer, "tokenizer.model"))
    with open(a.out, "w") as f:
        for length in (int(x) for x in a.lengths.split(",")):
            for doc, ctx in data.eval_items(enc, length, a.first + a.docs, a.questions,
                                             a.task_variant)[a.first:]:
                f.write(json.dumps({
                    "length": length, "seed": doc.seed, "kind": doc.kind,
                    "context_tokens": len(ctx), "document": doc.text,
                    "questions": [{"question": q.question,
                                   "answer": tasks.answer_text(doc, q, a.answer_format),
                                   "value": q.answer, "kind": q.kind,
                                   "depth": round(q.depth, 4)} for q in doc.questions],
                }) + "\n")


if __name__ == "__main__":
    main()
