#!/usr/bin/env python3
"""Writes one random tiny model twice: as a GGUF file the way llama.cpp's converter would, and as
the Hugging Face directory it came from, so a test can check that engine/gguf's LoadGgufModel
yields exactly the weights and config LoadHfModel yields.

The GGUF side is written with PyPI's gguf package (GGUFWriter, gguf.quants.quantize) and permutes
the q/k rows of "llama" files with the formula copied from llama.cpp's convert_hf_to_gguf.py
(LlamaModel.permute). Quantized tensors are stored in the Hugging Face directory as their
dequantized values (quantization works within rows, so it commutes with the row permutation), so
both files describe the same model exactly. A "llama3" case writes rope_freqs.weight as the
converter does (LlamaModel.generate_extra_tensors).

Usage: make_tiny_gguf.py --out DIR --case NAME [--seed N]
  cases: llama_gqa_tied_q8 (GQA, tied, Q8_0 / Q4_1 / Q5_0 / F16 / BF16 tensors),
         llama_mha_untied_llama3 (MHA, untied, llama3 RoPE scaling, F32),
         qwen2_bias (q/k/v biases, GQA, Q4_0 / Q5_1 / F32, not permuted)
Writes DIR/model.gguf and DIR/hf/{config.json, model.safetensors}.
"""
import argparse
import json
import math
import os
import struct

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

CASES = {
    "llama_gqa_tied_q8": dict(arch="llama", hidden=64, inter=96, layers=2, heads=4, kv_heads=2,
                              vocab=300, tied=True, bias=False, theta=10000.0, llama3=False,
                              quant={"attn_q": Q.Q8_0, "attn_k": Q.Q4_1, "attn_v": Q.Q5_0,
                                     "ffn_up": Q.F16, "ffn_down": Q.BF16, "token_embd": Q.Q8_0}),
    "llama_mha_untied_llama3": dict(arch="llama", hidden=48, inter=80, layers=3, heads=3,
                                    kv_heads=3, vocab=280, tied=False, bias=False,
                                    theta=500000.0, llama3=True, quant={}),
    "qwen2_bias": dict(arch="qwen2", hidden=64, inter=64, layers=2, heads=4, kv_heads=1,
                       vocab=290, tied=True, bias=True, theta=1000000.0, llama3=False,
                       quant={"attn_q": Q.Q4_0, "ffn_gate": Q.Q5_1}),
}
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def permute(weights, n_head, n_head_kv):
    """llama.cpp convert_hf_to_gguf.py, LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def llama3_rope_factors(head_dim, theta, s):
    """llama.cpp convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors."""
    base = theta
    dim = head_dim
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_context_len = s["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low
    high_freq_wavelen = old_context_len / high
    rope_factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low) / (high - low)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(rope_factors, dtype=np.float32)


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def tokenizer_vocab(vocab):
    """SentencePiece-style: unk, bos, eos, 256 byte pieces, "▁", a..j, then "▁a", "▁b", ..."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["\u2581"] + list("abcdefghij")
    types = [2, 3, 3] + [6] * 256 + [1] * 11
    k = 0
    while len(tokens) < vocab:
        tokens.append("\u2581" + "abcdefghij"[k % 10] * (1 + k // 10))
        types.append(1)
        k += 1
    scores = [0.0] * 259 + [-float(i) for i in range(vocab - 259)]  # merges rank by score
    return tokens, scores, types


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--case", required=True, choices=sorted(CASES))
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    c = CASES[args.case]
    rng = np.random.default_rng(args.seed)
    hd = c["hidden"] // c["heads"]
    qd, kvd = c["heads"] * hd, c["kv_heads"] * hd
    arch = c["arch"]

    def rand(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    hf, gg = {}, {}  # HF name -> f32 array; GGUF name -> (array or raw uint8, qtype or None)

    def add(hf_name, gguf_name, w, short, perm_heads=None):
        qtype = c["quant"].get(short)
        if qtype is not None and qtype not in (Q.F16, Q.BF16):
            raw = quantize(w, qtype)
            w = dequantize(raw, qtype).astype(np.float32)  # what both files hold
        elif qtype == Q.F16:
            w = w.astype(np.float16).astype(np.float32)
        elif qtype == Q.BF16:
            w = dequantize(quantize(w, Q.BF16), Q.BF16).astype(np.float32)
        hf[hf_name] = w
        g = w if perm_heads is None else permute(w, c["heads"], perm_heads)
        if qtype is None:
            gg[gguf_name] = (g, None)
        elif qtype == Q.F16:
            gg[gguf_name] = (g.astype(np.float16), None)
        else:
            gg[gguf_name] = (quantize(g, qtype), qtype)

    add("model.embed_tokens.weight", "token_embd.weight", rand(c["vocab"], c["hidden"]),
        "token_embd")
    for l in range(c["layers"]):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        perm = arch == "llama"
        add(p + "input_layernorm.weight", b + "attn_norm.weight", 1 + rand(c["hidden"]), "n")
        add(p + "self_attn.q_proj.weight", b + "attn_q.weight", rand(qd, c["hidden"]), "attn_q",
            c["heads"] if perm else None)
        add(p + "self_attn.k_proj.weight", b + "attn_k.weight", rand(kvd, c["hidden"]), "attn_k",
            c["kv_heads"] if perm else None)
        add(p + "self_attn.v_proj.weight", b + "attn_v.weight", rand(kvd, c["hidden"]), "attn_v")
        if c["bias"]:
            add(p + "self_attn.q_proj.bias", b + "attn_q.bias", rand(qd), "b")
            add(p + "self_attn.k_proj.bias", b + "attn_k.bias", rand(kvd), "b")
            add(p + "self_attn.v_proj.bias", b + "attn_v.bias", rand(kvd), "b")
        add(p + "self_attn.o_proj.weight", b + "attn_output.weight", rand(c["hidden"], qd),
            "attn_output")
        add(p + "post_attention_layernorm.weight", b + "ffn_norm.weight", 1 + rand(c["hidden"]),
            "n")
        add(p + "mlp.gate_proj.weight", b + "ffn_gate.weight", rand(c["inter"], c["hidden"]),
            "ffn_gate")
        add(p + "mlp.up_proj.weight", b + "ffn_up.weight", rand(c["inter"], c["hidden"]), "ffn_up")
        add(p + "mlp.down_proj.weight", b + "ffn_down.weight", rand(c["hidden"], c["inter"]),
            "ffn_down")
    add("model.norm.weight", "output_norm.weight", 1 + rand(c["hidden"]), "n")
    if not c["tied"]:
        add("lm_head.weight", "output.weight", rand(c["vocab"], c["hidden"]), "output")

    os.makedirs(os.path.join(args.out, "hf"), exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
        "model_type": arch, "hidden_size": c["hidden"], "intermediate_size": c["inter"],
        "num_hidden_layers": c["layers"], "num_attention_heads": c["heads"],
        "num_key_value_heads": c["kv_heads"], "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6, "rope_theta": c["theta"], "tie_word_embeddings": c["tied"],
        "vocab_size": c["vocab"], "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
        "rope_scaling": dict(LLAMA3_SCALING) if c["llama3"] else None, "torch_dtype": "float32",
    }
    with open(os.path.join(args.out, "hf", "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    write_safetensors(os.path.join(args.out, "hf", "model.safetensors"), hf)

    w = gguf.GGUFWriter(os.path.join(args.out, "model.gguf"), arch)
    w.add_name(f"tiny {args.case}")
    w.add_context_length(256)
    w.add_embedding_length(c["hidden"])
    w.add_block_count(c["layers"])
    w.add_feed_forward_length(c["inter"])
    w.add_rope_dimension_count(hd)
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv_heads"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(c["theta"])
    w.add_vocab_size(c["vocab"])
    tokens, scores, types = tokenizer_vocab(c["vocab"])
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' "
                        "+ message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}")
    if c["llama3"]:
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(hd, c["theta"], LLAMA3_SCALING))
    for name, (arr, qtype) in gg.items():
        if qtype is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
