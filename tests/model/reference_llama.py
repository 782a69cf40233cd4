#!/usr/bin/env python3
"""Independent numpy reference of a Llama-family decoder (Llama-2/3, Mistral, Qwen2).

Written from the published math (RMSNorm, rotate-half RoPE with llama3 / linear scaling, grouped
query attention with a causal mask, SwiGLU MLP), not from Squeeze's C++. Reads a Hugging Face
directory (config.json + model.safetensors or sharded with model.safetensors.index.json; F32, F16
and BF16 tensors) with its own safetensors parser and computes every position's logits in float64.

  reference_llama.py --model DIR --tokens 1,5,7 --out logits.f64
writes the logits as raw little-endian float64, shape [len(tokens)][vocab].
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[base + begin:base + end]
        dtype = info["dtype"]
        if dtype == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        elif dtype == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dtype == "BF16":
            arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        tensors[name] = arr.reshape(info["shape"]).astype(np.float64)
    return tensors


def read_weights(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(read_safetensors(os.path.join(model_dir, shard)))
        return tensors
    return read_safetensors(os.path.join(model_dir, "model.safetensors"))


def inv_frequencies(cfg, head_dim):
    theta = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    scaling = cfg.get("rope_scaling")
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = scaling["factor"]
    if kind == "linear":
        return inv / factor
    if kind == "llama3":
        low = scaling.get("low_freq_factor", 1.0)
        high = scaling.get("high_freq_factor", 4.0)
        old = scaling.get("original_max_position_embeddings", 8192)
        out = np.empty_like(inv)
        for i, f in enumerate(inv):
            wavelen = 2 * math.pi / f
            if wavelen < old / high:      # high frequency: unchanged
                out[i] = f
            elif wavelen > old / low:     # low frequency: scaled down
                out[i] = f / factor
            else:                         # in between: interpolate
                smooth = (old / wavelen - low) / (high - low)
                out[i] = (1 - smooth) * f / factor + smooth * f
        return out
    raise ValueError(f"unsupported rope_scaling {kind}")


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, inv):
    # x: [T, heads, d]; rotate_half pairs element i with i + d/2.
    half = x.shape[-1] // 2
    angles = positions[:, None] * inv[None, :]            # [T, d/2]
    cos = np.cos(angles)[:, None, :]
    sin = np.sin(angles)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def forward(model_dir, tokens):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    w = read_weights(model_dir)
    hidden = cfg["hidden_size"]
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_heads)
    d = cfg.get("head_dim") or hidden // n_heads
    eps = cfg.get("rms_norm_eps", 1e-6)
    bias = cfg.get("attention_bias", False) or cfg["model_type"] == "qwen2"
    inv = inv_frequencies(cfg, d)
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    x = w["model.embed_tokens.weight"][np.array(tokens)]
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = h @ w[p + "self_attn.q_proj.weight"].T
        k = h @ w[p + "self_attn.k_proj.weight"].T
        v = h @ w[p + "self_attn.v_proj.weight"].T
        if bias:
            q += w[p + "self_attn.q_proj.bias"]
            k += w[p + "self_attn.k_proj.bias"]
            v += w[p + "self_attn.v_proj.bias"]
        q = rope(q.reshape(T, n_heads, d), pos, inv)
        k = rope(k.reshape(T, n_kv, d), pos, inv)
        v = v.reshape(T, n_kv, d)
        group = n_heads // n_kv
        out = np.empty((T, n_heads, d))
        for head in range(n_heads):
            kh, vh = k[:, head // group], v[:, head // group]
            s = q[:, head] @ kh.T / math.sqrt(d) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
            out[:, head] = s @ vh
        x = x + out.reshape(T, n_heads * d) @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight")
    if head is None or cfg.get("tie_word_embeddings", False):
        head = w["model.embed_tokens.weight"]
    return x @ head.T


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    logits = forward(args.model, tokens)
    logits.astype("<f8").tofile(args.out)
    print(f"{args.out}: {logits.shape[0]} x {logits.shape[1]} logits, "
          f"max |logit| {np.abs(logits).max():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
