"""Writes tests/longctx/testdata/golden.json: logits of models/longctx computed by Hugging Face
transformers (LlamaForCausalLM, fp32 on the CPU) on a held-out document + question, and its greedy
answer. tests/longctx/longctx_model_test.cc checks our runtime against this file;
tests/longctx/hf_parity_test.py checks that the file still matches transformers.

Needs the Hugging Face venv (tests/gguf/hf_parity_setup.sh): .venv-hf/bin/python
tests/longctx/make_golden.py. Picks the first held-out document (seeds from 0) of ~700 tokens, of the
task the model was trained on (tasks.MODEL_VARIANT, MODEL_ANSWER_FORMAT), whose first question the
model answers correctly, so the C++ test checks a right answer.
"""

import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "train"))
MODEL_DIR = os.path.join(ROOT, "models", "longctx")
OUT = os.path.join(ROOT, "tests", "longctx", "testdata", "golden.json")
LENGTH = 700           # context tokens at most
POSITIONS = 4          # logits rows stored: first, two inside, last of the prompt
MAX_ANSWER = 48        # greedy answer tokens at most (a restated fact, train.ANSWER_TOKENS)


def hf_model():
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(MODEL_DIR, torch_dtype=torch.float32).eval()


def prompt_for(index, enc):
    import tasks
    doc = tasks.generate(tasks.heldout_seed(LENGTH, index), LENGTH, n_questions=1,
                         count_tokens=enc.count, variant=tasks.MODEL_VARIANT)
    q = doc.questions[0]
    ctx = [1] + enc.sp.encode(doc.text)
    query = enc.sp.encode(tasks.query_text(q.question))
    return doc, q, ctx, query


@torch.no_grad()
def greedy(model, ids, max_tokens=MAX_ANSWER):
    out = []
    for _ in range(max_tokens):
        nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
        if nxt == 2:
            break
        out.append(nxt)
    return out


@torch.no_grad()
def compute(model, ids):
    logits = model(torch.tensor([ids])).logits[0]
    n = len(ids)
    rows = sorted({0, n // 3, (2 * n) // 3, n - 1})
    return rows, {str(r): [float(x) for x in logits[r]] for r in rows}


def main():
    import data
    import tasks
    enc = data.Encoder(os.path.join(MODEL_DIR, "tokenizer.model"))
    model = hf_model()
    for index in range(50):
        doc, q, ctx, query = prompt_for(index, enc)
        ids = ctx + query
        ans = greedy(model, ids)
        want = tasks.answer_text(doc, q, tasks.MODEL_ANSWER_FORMAT)
        if enc.decode(ans).strip() == want:
            break
    else:
        raise SystemExit("no held-out document answered correctly in 50 tries")
    rows, logits = compute(model, ids)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"document": doc.text, "question": q.question, "answer": want,
                   "max_tokens": len(ans) + 2, "seed": doc.seed, "context_ids": ctx, "query_ids": query,
                   "greedy_ids": ans, "rows": rows, "logits": logits}, f)
    print(f"wrote {OUT}: seed {doc.seed}, {len(ids)} tokens, answer {want!r}")


if __name__ == "__main__":
    main()
