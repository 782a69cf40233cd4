#!/usr/bin/env python3
"""Dumps the tokenizer metadata of a GGUF file as PyPI's gguf package reads it (GGUFReader), as
JSON with every string hex-encoded (exact bytes): tokens, token_type, merges, scores (if any),
bos/eos/unk/pad ids, model, pre. tests/gguf/smollm2_test.cc compares it with our reading.

Usage: dump_gguf_vocab.py MODEL.gguf OUT.json
"""
import json
import sys

import gguf


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).hex() for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).hex()
    return f.parts[f.data[0]].tolist()[0]


def main():
    reader = gguf.GGUFReader(sys.argv[1])
    out = {k: field(reader, "tokenizer.ggml." + k) for k in
           ("model", "pre", "tokens", "token_type", "merges", "scores", "bos_token_id",
            "eos_token_id", "unknown_token_id", "padding_token_id", "add_bos_token")}
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
