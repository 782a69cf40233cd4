"""Trains the longctx tokenizer and writes it as a Hugging Face tokenizer.json.

SentencePiece BPE with byte fallback, trained on text from train/tasks.py (documents, questions and
answers of training seeds), digits split one per token (copying a number is then copying digits),
no normalisation (the text is ASCII). The model is converted to the Llama-2 layout of
tokenizer.json that engine/tokenizer loads: a "Prepend ▁" + "Replace ' ' -> ▁" normalizer, a BPE
model whose merges are derived from the vocabulary (a pair may merge when its concatenation is a
piece; pairs whose result has the higher SentencePiece score merge first, which is how
SentencePiece's BPE encoder ranks them), byte-fallback pieces <0x00>..<0xFF>, <unk>=0, <s>=1,
</s>=2.

Usage (from the repository root, with a python that has sentencepiece):
    python train/tokenizer.py --out DIR [--vocab 2048] [--docs 3000] [--seed 7]
writes DIR/tokenizer.model (SentencePiece), DIR/tokenizer.json, DIR/tokenizer_config.json.
The same arguments give the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402

METASPACE = "\u2581"


def corpus_lines(n_docs: int, seed: int, variant: str = "grid") -> List[str]:
    """Sentences, questions and answers of n_docs training documents (lengths 256..4096)."""
    lines: List[str] = []
    for i in range(n_docs):
        doc = tasks.generate(tasks.train_seed(seed, 10**6, i), 256 << (i % 5), n_questions=8,
                             variant=variant)
        lines.extend(doc.sentences)
        for q in doc.questions:
            lines.append(tasks.query_text(q.question) + " " + q.answer)
    return lines


def train_sentencepiece(lines: List[str], vocab: int, prefix: str) -> None:
    import sentencepiece as spm
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        path = f.name
    try:
        spm.SentencePieceTrainer.train(
            input=path, model_prefix=prefix, model_type="bpe", vocab_size=vocab,
            byte_fallback=True, split_digits=True, character_coverage=1.0,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            num_threads=os.cpu_count() or 1, input_sentence_size=0, shuffle_input_sentence=False,
            minloglevel=2)
    finally:
        os.unlink(path)


def derive_merges(pieces: List[Tuple[str, float, int]]) -> List[List[str]]:
    """pieces: (piece, score, type) in id order (type 1 = normal). Returns merges in rank order."""
    vocab: Dict[str, int] = {}
    for i, (p, _, t) in enumerate(pieces):
        if t == 1 and p not in vocab:
            vocab[p] = i
    ranked = []
    for p, i in vocab.items():
        if len(p) < 2:
            continue
        score = pieces[i][1]
        splits = [(p[:k], p[k:]) for k in range(1, len(p)) if p[:k] in vocab and p[k:] in vocab]
        splits.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        for left, right in splits:
            ranked.append((-score, i, vocab[left], left, right))
    ranked.sort()
    return [[left, right] for _, _, _, left, right in ranked]


def to_tokenizer_json(model_path: str) -> dict:
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model_path)
    pieces = []
    for i in range(sp.get_piece_size()):
        if sp.is_unknown(i):
            t = 2
        elif sp.is_control(i):
            t = 3
        elif sp.is_byte(i):
            t = 6
        else:
            t = 1
        pieces.append((sp.id_to_piece(i), sp.get_score(i), t))
    assert pieces[0][0] == "<unk>" and pieces[1][0] == "<s>" and pieces[2][0] == "</s>"
    added = [{"id": i, "content": pieces[i][0], "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True} for i in range(3)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": METASPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": METASPACE}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": METASPACE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": "<unk>",
            "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
            "byte_fallback": True, "ignore_merges": False,
            "vocab": {p: i for i, (p, _, _) in enumerate(pieces)},
            "merges": derive_merges(pieces)},
    }


TOKENIZER_CONFIG = {
    "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
    "unk_token": "<unk>", "model_max_length": 16384, "tokenizer_class": "LlamaTokenizerFast",
}


def build(out_dir: str, vocab: int, n_docs: int, seed: int, variant: str = "grid") -> None:
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, "tokenizer")
    train_sentencepiece(corpus_lines(n_docs, seed, variant), vocab, prefix)
    os.remove(prefix + ".vocab")
    with open(os.path.join(out_dir, "tokenizer.json"), "w") as f:
        json.dump(to_tokenizer_json(prefix + ".model"), f, ensure_ascii=False, indent=None)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(TOKENIZER_CONFIG, f, indent=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--task-variant", choices=tasks.VARIANTS, default=tasks.MODEL_VARIANT,
                    help="the documents it is trained on (tasks.VARIANTS)")
    a = ap.parse_args()
    build(a.out, a.vocab, a.docs, a.seed, a.task_variant)


if __name__ == "__main__":
    main()
