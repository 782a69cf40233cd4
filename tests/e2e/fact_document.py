"""Writes a synthetic fact document and its retrieval questions for tests/e2e/daemon_check.sh.

The documents are those the project's long-context model was trained on (train/tasks.py, variant
`distinct`): facts about places and people among filler sentences, each question answerable from
one fact (models/longctx answers them).

Usage: python3 tests/e2e/fact_document.py OUT_DIR [--tokens 12000] [--seed 20261130]
Writes OUT_DIR/doc.txt and OUT_DIR/questions.json ([{"q": prompt, "a": answer}, ...]).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "train"))
import tasks  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--tokens", type=int, default=12000, help="approximate document length")
    ap.add_argument("--seed", type=int, default=20261130)
    ap.add_argument("--questions", type=int, default=6)
    a = ap.parse_args()
    doc = tasks.generate(a.seed, a.tokens, n_questions=a.questions, variant="distinct")
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "doc.txt"), "w") as f:
        f.write(doc.text)
    with open(os.path.join(a.out_dir, "questions.json"), "w") as f:
        json.dump([{"q": tasks.query_text(q.question), "a": q.answer} for q in doc.questions], f,
                  indent=1)
    print(f"{a.out_dir}: {len(doc.text.split())} words, {len(doc.questions)} questions")


if __name__ == "__main__":
    main()
