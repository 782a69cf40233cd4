"""Our tokenizer (engine/tokenizer through sqz-tokenize) on models/longctx/tokenizer.json equals
SentencePiece on models/longctx/tokenizer.model, both ways (encode and decode), on generated
documents, queries, answers and awkward strings.

Usage (CTest): python tests/longctx/test_tokenizer.py PATH/TO/sqz-tokenize
Exit status 77 (skipped) when sentencepiece or the tokenizer files are missing.
"""

import json
import os
import subprocess
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "train"))
MODEL_DIR = os.path.join(ROOT, "models", "longctx")
TOOL = sys.argv.pop(1) if len(sys.argv) > 1 else ""

try:
    import sentencepiece as spm
except ImportError as e:  # pragma: no cover - environment
    print(f"skipped: {e}")
    sys.exit(77)
for f in ("tokenizer.model", "tokenizer.json"):
    if not os.path.exists(os.path.join(MODEL_DIR, f)):
        print(f"skipped: {MODEL_DIR}/{f} is missing")
        sys.exit(77)

import tasks  # noqa: E402

SP = spm.SentencePieceProcessor(model_file=os.path.join(MODEL_DIR, "tokenizer.model"))


def ours(text: str, bos: bool = True) -> list:
    args = [TOOL, "--model", MODEL_DIR] + ([] if bos else ["--no-bos"]) + ["-"]
    out = subprocess.run(args, input=text.encode(), capture_output=True, check=True)
    return json.loads(out.stdout)["ids"]


def ours_decode(ids: list) -> str:
    args = [TOOL, "--model", MODEL_DIR, "--decode", "--skip-special", "-"]
    out = subprocess.run(args, input=",".join(map(str, ids)).encode(), capture_output=True,
                         check=True)
    return json.loads(out.stdout)["text"]


class TokenizerParityTest(unittest.TestCase):
    def setUp(self):
        if not TOOL or not os.path.exists(TOOL):
            self.skipTest("no sqz-tokenize given")

    def check(self, text: str):
        want = [1] + SP.encode(text)
        self.assertEqual(ours(text), want, text[:200])
        self.assertEqual(ours(text, bos=False), want[1:])
        self.assertEqual(ours_decode(want), SP.decode(want[1:]))

    def test_generated_documents_questions_and_answers(self):
        for seed in (tasks.HELDOUT_SEED_BASE + 1, 2, 3):
            doc = tasks.generate(seed, 1500, n_questions=8)
            self.check(doc.text)
            for q in doc.questions:
                self.check(tasks.query_text(q.question))
                self.check(q.answer)

    def test_digits_are_one_token_each(self):
        ids = SP.encode("Locker 4821 and 90210.")
        pieces = [SP.id_to_piece(i) for i in ids]
        for p in pieces:
            digits = [c for c in p if c.isdigit()]
            self.assertLessEqual(len(digits), 1, pieces)
        self.check("Locker 4821 and 90210.")

    def test_awkward_strings(self):
        for text in ["a", "  two  spaces ", "Tab\tand\nnewline", "Zoë in Malmö: ça va? ✓",
                     "emoji 🙂 fallback", "UPPER lower MiXeD", "x" * 300, "1234567890" * 3]:
            self.check(text)

    def test_vocabulary_size(self):
        with open(os.path.join(MODEL_DIR, "tokenizer.json")) as f:
            vocab = json.load(f)["model"]["vocab"]
        self.assertEqual(len(vocab), SP.get_piece_size())
        with open(os.path.join(MODEL_DIR, "config.json")) as f:
            config = json.load(f)
        self.assertEqual(config["vocab_size"], SP.get_piece_size())


if __name__ == "__main__":
    unittest.main()
