"""Dense exact-match accuracy of an exported longctx model in PyTorch (fp32), on the held-out
documents that train/eval_set.py writes and sqz-longctx-eval reads (the same seeds), with one
line per question so the answers can be compared with sqz-longctx-eval --log.

Usage: python train/eval_torch.py --model models/longctx [--lengths 1024,2048] [--docs 16]
           [--questions 8] [--log FILE.tsv]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import data  # noqa: E402
import tasks  # noqa: E402
import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description="dense accuracy of an exported model in PyTorch")
    ap.add_argument("--model", required=True, help="exported HF directory (models/longctx)")
    ap.add_argument("--lengths", default="1024,2048")
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--log", default="")
    ap.add_argument("--answer-format", choices=tasks.ANSWER_FORMATS,
                    default=tasks.MODEL_ANSWER_FORMAT,
                    help="what the model was trained to answer (tasks.ANSWER_FORMATS)")
    ap.add_argument("--task-variant", choices=tasks.VARIANTS, default=tasks.MODEL_VARIANT,
                    help="the documents' entities and facts (tasks.VARIANTS)")
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = train.load_exported(a.model, device)
    enc = data.Encoder(os.path.join(a.model, "tokenizer.model"))
    log = open(a.log, "w") if a.log else None
    for length in (int(x) for x in a.lengths.split(",")):
        ok = n = 0
        for doc, ctx in data.eval_items(enc, length, a.docs, a.questions, a.task_variant):
            with torch.no_grad():
                _, past = model(torch.tensor([ctx], device=device))
            for q in doc.questions:
                want = tasks.answer_text(doc, q, a.answer_format)
                ids = train.answer(model, past, len(ctx), enc(tasks.query_text(q.question)),
                                   device, train.ANSWER_TOKENS[a.answer_format])
                got = enc.decode(ids).strip()
                if q.kind != "twohop":
                    ok += got == want
                    n += 1
                if log:
                    log.write(f"{length}\t{doc.seed}\t{q.kind}\t{q.question}\t{want}\t"
                              f"{int(got == want)}\t{got}\n")
        print(f"length {length}: retrieval {ok}/{n} ({100.0 * ok / max(1, n):.1f}%)", flush=True)
    if log:
        log.close()


if __name__ == "__main__":
    main()
