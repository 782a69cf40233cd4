#!/usr/bin/env python3
"""Writes vocabulary-only GGUF files the way llama.cpp's convert_hf_to_gguf.py does, for the
tokenizers in ../shared/tokenizers, so tests/gguf/gguf_vocab_vectors_test.cc can run llama.cpp's
own conformance vectors through engine/gguf's tokenizer mapping (llama.cpp tests the same vectors
on its ggml-vocab-llama-{spm,bpe}.gguf files):

  llama-spm.gguf  from llama2/tokenizer.model (SentencePiece; as _create_vocab_sentencepiece:
                  pieces, scores, types normal / unknown / control / unused / byte),
                  tokenizer.ggml.model "llama";
  llama-bpe.gguf  from llama3/tokenizer.json (as get_vocab_base: vocabulary plus added tokens,
                  special added tokens CONTROL, others USER_DEFINED, merges as "a b"),
                  tokenizer.ggml.model "gpt2", tokenizer.ggml.pre "llama-bpe".

Usage: make_vocab_ggufs.py SHARED_TOKENIZERS_DIR OUT_DIR
"""
import json
import os
import sys

import gguf
import sentencepiece as spm
from gguf import TokenType


def spm_vocab(path, out):
    sp = spm.SentencePieceProcessor()
    sp.LoadFromFile(path)
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        t = TokenType.NORMAL
        if sp.is_unknown(i):
            t = TokenType.UNKNOWN
        elif sp.is_control(i):
            t = TokenType.CONTROL
        elif sp.is_unused(i):
            t = TokenType.UNUSED
        elif sp.is_byte(i):
            t = TokenType.BYTE
        types.append(t)
    w = gguf.GGUFWriter(out, "llama")
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    finish(w)


def bpe_vocab(path, out):
    with open(path) as f:
        tj = json.load(f)
    vocab = dict(tj["model"]["vocab"])
    added = {t["id"]: t for t in tj["added_tokens"]}
    size = max(max(vocab.values()), max(added) if added else -1) + 1
    by_id = {i: tok for tok, i in vocab.items()}
    tokens, types = [], []
    for i in range(size):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(TokenType.CONTROL if added[i]["special"] else TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w = gguf.GGUFWriter(out, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(128000)
    w.add_eos_token_id(128001)
    w.add_add_bos_token(True)
    finish(w)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    spm_vocab(os.path.join(src, "llama2", "tokenizer.model"), os.path.join(out, "llama-spm.gguf"))
    bpe_vocab(os.path.join(src, "llama3", "tokenizer.json"), os.path.join(out, "llama-bpe.gguf"))


if __name__ == "__main__":
    main()
