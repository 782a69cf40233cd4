#!/usr/bin/env python3
"""Writes a GGUF file of dequantization test cases checked against PyPI's gguf package.

For every case the file holds a tensor "<case>.q" (raw blocks of some ggml type) and "<case>.ref"
(F32, the blocks as gguf.quants.dequantize returns them). tests/gguf/dequant_parity_test.cc
dequantizes every .q tensor with our C++ code and requires the bytes of .ref exactly.

Cases:
  real/...  rows and whole tensors copied from a real model file (--model), one set per ggml type
            the file contains (SmolLM2-135M-Instruct Q4_1: F32, Q4_1, Q8_0);
  gen/...   for the other types: random fp32 data quantized by gguf.quants.quantize (Q4_0, Q4_1,
            Q5_0, Q5_1, Q8_0, BF16, F16, F32), or random raw blocks with sane f16 scales for the types
            the package can only dequantize (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K); 1, 3, 127 and 129 blocks.

Usage: make_dequant_fixtures.py --out FILE [--model MODEL.gguf] [--seed N]
"""
import argparse
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

QUANTIZABLE = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16, Q.F16, Q.F32]
# K-quant block layouts: byte offsets of the f16 scale fields inside each block.
KQUANT_SCALE_OFFSETS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2),
                        Q.Q6_K: (208,)}
BLOCK_COUNTS = [1, 3, 127, 129]


def add_case(writer, name, raw_u8, qtype, ref_f32):
    """raw_u8: uint8 [rows][bytes per row]; ref_f32: float32 [rows][elements per row]."""
    writer.add_tensor(name + ".q", np.ascontiguousarray(raw_u8), raw_dtype=qtype)
    writer.add_tensor(name + ".ref", np.ascontiguousarray(ref_f32, dtype=np.float32))


def real_cases(writer, model_path):
    reader = gguf.GGUFReader(model_path)
    by_type = {}
    for t in reader.tensors:
        by_type.setdefault(t.tensor_type, []).append(t)
    for qtype, tensors in sorted(by_type.items()):
        tensors.sort(key=lambda t: t.n_bytes)
        # The smallest tensor whole (at most its first 256 rows), plus the first, middle and last
        # rows of the largest.
        small, large = tensors[0], tensors[-1]
        for t, rows in ((small, None), (large, "rows")):
            data = np.asarray(t.data)
            raw = data.view(np.uint8).reshape(data.shape[0] if data.ndim > 1 else 1, -1)
            if rows:
                raw = raw[sorted({0, raw.shape[0] // 2, raw.shape[0] - 1})]
            else:
                raw = raw[:256]
            ref = dequantize(raw, qtype).astype(np.float32)
            name = f"real/{qtype.name}/{t.name}" + ("/rows" if rows else "")
            add_case(writer, name, raw, qtype, ref.reshape(raw.shape[0], -1))
            print(f"  {name}: {raw.shape[0]} rows of {ref.size // raw.shape[0]}", file=sys.stderr)
    # Whole-model checks: for every tensor, the float64 sum and sum of squares of its dequantized
    # values, so the C++ side can check all of them without storing them.
    names, sums = [], []
    for t in reader.tensors:
        v = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64)
        names.append(t.name)
        sums += [float(v.sum()), float((v * v).sum())]
    writer.add_array("fixtures.real_tensor_names", names)
    writer.add_tensor("fixtures.real_tensor_sums", np.array(sums, dtype=np.float64))  # F64
    return sorted(q.name for q in by_type)


def random_half_scales(rng, n):
    """f16 scales spanning normal magnitudes, both signs, some zeros and subnormals."""
    mags = np.exp2(rng.uniform(-16, 2, size=n)).astype(np.float16)
    signs = np.where(rng.random(n) < 0.2, -1, 1).astype(np.float16)
    s = mags * signs
    s[rng.random(n) < 0.03] = 0
    return s


def generated_cases(writer, rng):
    for qtype in QUANTIZABLE:
        block, _ = gguf.GGML_QUANT_SIZES[qtype]
        for nb in BLOCK_COUNTS:
            rows = 2
            n = nb * max(block, 32)
            data = (rng.standard_normal((rows, n)) * rng.uniform(0.01, 3)).astype(np.float32)
            data[0, : min(5, n)] = [0.0, -0.0, 1e-8, -65504.0, 3.0][: min(5, n)]
            raw = quantize(data, qtype)
            raw_u8 = raw.view(np.uint8).reshape(rows, -1)
            ref = dequantize(raw_u8, qtype).astype(np.float32)
            add_case(writer, f"gen/{qtype.name}/{nb}", raw_u8, qtype, ref.reshape(rows, -1))
    for qtype, scale_offsets in KQUANT_SCALE_OFFSETS.items():
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        for nb in BLOCK_COUNTS:
            raw = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
            for off in scale_offsets:
                raw[:, off : off + 2] = random_half_scales(rng, nb).view(np.uint8).reshape(nb, 2)
            raw = raw.reshape(1, nb * size)
            ref = dequantize(raw, qtype).astype(np.float32)
            assert np.isfinite(ref).all()
            add_case(writer, f"gen/{qtype.name}/{nb}", raw, qtype, ref.reshape(1, -1))
    return sorted(q.name for q in QUANTIZABLE + list(KQUANT_SCALE_OFFSETS))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="")
    ap.add_argument("--seed", type=int, default=20251129)
    args = ap.parse_args()
    writer = gguf.GGUFWriter(args.out, "fixtures")
    writer.add_string("fixtures.gguf_version", gguf.__version__ if hasattr(gguf, "__version__")
                      else "unknown")
    real = real_cases(writer, args.model) if args.model else []
    gen = generated_cases(writer, np.random.default_rng(args.seed))
    writer.add_array("fixtures.real_types", real or [""])
    writer.add_array("fixtures.generated_types", gen)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {args.out}: real {real}, generated {gen}", file=sys.stderr)


if __name__ == "__main__":
    main()
