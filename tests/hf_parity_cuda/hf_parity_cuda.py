#!/usr/bin/env python3
"""Parity of our backends with Hugging Face transformers on random models of real shapes.

For each shape (2 layers; Llama-3-8B with llama3 RoPE scaling, Llama-2-7B MHA, Qwen2-7B with q/k/v
bias) this builds a random model with transformers (seeded; RMSNorm weights and biases randomised
too, so that a loader that skipped them would show), saves it in bf16 as model.safetensors plus a
config.json in the format of the published checkpoints, and runs the same random token ids through
  * transformers in fp32 on the bf16-rounded weights (the reference),
  * transformers in bf16 (a baseline: how far bf16 arithmetic alone moves the logits),
  * our backend through sqz-hf-logits (hf_loader + CudaBackend in bf16 and fp32, or CpuBackend):
    a prefill of the first positions with logits for each, then one token per decode step.
Per position: relative L2 of the logits against the reference and whether the argmax agrees.
Pass (issue 8, done-when 3): every position's relative L2 <= 2e-2 and the same argmax at >= 99% of
the positions. Exit status 1 if any compared run fails or errors.

Usage (GPU machine): python3 hf_parity_cuda.py --tool .../sqz-hf-logits [--out-json FILE]
Local check of the pipeline on tiny shapes (CPU torch, CpuBackend):
    python3 hf_parity_cuda.py --tool build/tests/hf_parity_cuda/sqz-hf-logits --tiny \
        --device cpu --backend cpu
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model"))
import torch
import transformers
from safetensors.torch import save_file

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

# name -> (architecture, config fields in the published config.json format)
SHAPES = {
    "llama3-8b": ("llama", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                num_attention_heads=32, num_key_value_heads=8,
                                max_position_embeddings=131072, rope_theta=500000.0,
                                rope_scaling=LLAMA3_ROPE, rms_norm_eps=1e-5)),
    "llama2-7b": ("llama", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                num_attention_heads=32, num_key_value_heads=32,
                                max_position_embeddings=4096, rope_theta=10000.0,
                                rope_scaling=None, rms_norm_eps=1e-5)),
    "qwen2-7b": ("qwen2", dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                               num_attention_heads=28, num_key_value_heads=4,
                               max_position_embeddings=32768, rope_theta=1000000.0,
                               rope_scaling=None, rms_norm_eps=1e-6)),
}
# The same structure at toy sizes, to check the pipeline on a machine without a GPU.
TINY = {
    "llama3-8b": dict(vocab_size=1000, hidden_size=128, intermediate_size=352,
                      num_attention_heads=4, num_key_value_heads=2),
    "llama2-7b": dict(vocab_size=512, hidden_size=128, intermediate_size=256,
                      num_attention_heads=4, num_key_value_heads=4),
    "qwen2-7b": dict(vocab_size=768, hidden_size=112, intermediate_size=300,
                     num_attention_heads=4, num_key_value_heads=2),
}

REL_L2_BOUND = 2e-2
ARGMAX_SHARE = 0.99


def log(msg):
    print(msg, flush=True)


def published_config(arch, fields, layers):
    """config.json as the published checkpoints write it (rope_theta + rope_scaling)."""
    cfg = {"architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"],
           "model_type": arch, "hidden_act": "silu", "num_hidden_layers": layers,
           "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1,
           "eos_token_id": 2, "attention_bias": arch == "qwen2", "mlp_bias": False}
    cfg.update(fields)
    if arch == "qwen2":
        cfg.pop("attention_bias")
        cfg.update(use_sliding_window=False, sliding_window=None)
    return cfg


def expected_inv_freq(cfg):
    """RoPE inverse frequencies the config implies (the llama3 rule where it is set)."""
    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    inv = 1.0 / (cfg["rope_theta"] ** (np.arange(0, d, 2, dtype=np.float64) / d))
    rs = cfg.get("rope_scaling")
    if rs:
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        orig = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > orig / low, inv / factor, inv)
        smooth = (orig / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= orig / high) & (wavelen <= orig / low)
        inv = np.where(medium, smoothed, scaled)
    return inv


def hf_config(arch, cfg, attn):
    """A transformers config object for `cfg` (works with transformers 4.x and 5.x)."""
    cls = transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config
    kwargs = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type",
                                                         "torch_dtype")}
    hc = cls(**kwargs)
    if hasattr(hc, "rope_parameters"):  # transformers 5: RoPE settings live here
        rp = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
        if cfg.get("rope_scaling"):
            rp.update(cfg["rope_scaling"])
        hc.rope_parameters = rp
    if attn:
        hc._attn_implementation = attn
    return hc


def rope_buffers(model):
    """fp32 copies of the RoPE inverse-frequency buffers, by (module, buffer name)."""
    saved = []
    for module in model.modules():
        for name, buf in module.named_buffers(recurse=False):
            if name.endswith("inv_freq") and buf is not None:
                saved.append((module, name, buf.detach().float().clone()))
    return saved


def restore_rope(saved):
    """Module.to(dtype) also rounds the non-persistent inv_freq buffers (to bf16: RoPE angles off
    by up to position x 2^-9 radians). transformers computes them in fp32 and loading a checkpoint
    keeps them so; put the fp32 values back after every cast."""
    for module, name, value in saved:
        module._buffers[name] = value.to(module._buffers[name].device)


def find_inv_freq(model):
    for name, buf in model.named_buffers():
        if name.endswith("inv_freq"):
            return buf
    return None


def build_model(arch, cfg, device, seed, attn):
    torch.manual_seed(seed)
    hc = hf_config(arch, cfg, attn)
    cls = transformers.LlamaForCausalLM if arch == "llama" else transformers.Qwen2ForCausalLM
    if device != "cpu" and hasattr(torch, "device") and hasattr(torch.device, "__enter__"):
        with torch.device(device):
            model = cls(hc)
    else:
        model = cls(hc).to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Norm weights and biases start at 1 and 0: randomise them so that each is tested.
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    model.eval()
    inv = find_inv_freq(model)
    if inv is not None:
        want = expected_inv_freq(cfg)
        got = inv.detach().double().cpu().numpy()
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=0):
            raise RuntimeError(f"transformers' RoPE frequencies differ from the config's "
                               f"(got {got[:4]}..., want {want[:4]}...)")
        log(f"  transformers' RoPE frequencies match config.json ({len(want)} values)")
    else:
        log("  note: no inv_freq buffer found; RoPE settings not cross-checked")
    saved = rope_buffers(model)
    model = model.to(torch.bfloat16)
    restore_rope(saved)
    return model, saved


def save_checkpoint(model, cfg, path):
    os.makedirs(path, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()
               if not k.endswith("inv_freq")}
    save_file({k: v.cpu() for k, v in tensors.items()}, os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def logits_of(model, ids, device):
    with torch.no_grad():
        x = torch.tensor(ids, dtype=torch.long, device=device)[None, :]
        out = model(input_ids=x, use_cache=False)
        return out.logits[0].float().cpu().numpy()


def compare(ours, ref):
    """Per-position relative L2 and argmax agreement of ours [n][vocab] against ref."""
    diff = np.linalg.norm((ours - ref).astype(np.float64), axis=1)
    rel = diff / np.maximum(np.linalg.norm(ref.astype(np.float64), axis=1), 1e-30)
    a_ours, a_ref = ours.argmax(axis=1), ref.argmax(axis=1)
    agree = a_ours == a_ref
    # For each disagreement: the reference's gap between its top token and ours, in units of the
    # row's logit standard deviation (near-ties flip under bf16 rounding).
    rows = np.nonzero(~agree)[0]
    gaps = [float((ref[r, a_ref[r]] - ref[r, a_ours[r]]) / ref[r].std()) for r in rows]
    finite = bool(np.isfinite(ours).all())
    return {"max_rel_l2": float(rel.max()) if finite else float("inf"),
            "median_rel_l2": float(np.median(rel)) if finite else float("inf"),
            "argmax_agree": int(agree.sum()), "positions": int(len(agree)),
            "flip_gaps_in_std": gaps[:20], "finite": finite}


def passes(m):
    return (m["finite"] and m["max_rel_l2"] <= REL_L2_BOUND
            and m["argmax_agree"] >= math.ceil(ARGMAX_SHARE * m["positions"]))


def run_shape(name, args, work):
    arch, fields = SHAPES[name]
    fields = dict(fields)
    if args.tiny:
        fields.update(TINY[name])
    cfg = published_config(arch, fields, args.layers)
    t0 = time.time()
    model, rope_fp32 = build_model(arch, cfg, args.device, args.seed, args.attn)
    log(f"  transformers attention: {getattr(model.config, '_attn_implementation', '?')}")
    path = os.path.join(work, name)
    save_checkpoint(model, cfg, path)
    size = os.path.getsize(os.path.join(path, "model.safetensors"))
    log(f"  built and saved in {time.time() - t0:.1f} s ({size / 1e9:.2f} GB)")
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, cfg["vocab_size"], size=args.positions).astype(np.int32)
    ids_path = os.path.join(path, "ids.i32")
    ids.tofile(ids_path)

    t0 = time.time()
    hf_bf16 = logits_of(model, ids, args.device)
    model = model.float()  # the bf16-rounded weights, computed in fp32: the reference
    restore_rope(rope_fp32)
    ref = logits_of(model, ids, args.device)
    # The reference must be causal: changing the second half of the ids leaves the first half's
    # logits unchanged.
    half = len(ids) // 2
    other = ids.copy()
    other[half:] = (other[half:] + 1) % cfg["vocab_size"]
    moved = np.abs(logits_of(model, other, args.device)[:half] - ref[:half]).max()
    log(f"  transformers causality: first-half logits move by {moved:.3g} when the second half "
        f"changes ({'causal' if moved <= 1e-4 * np.abs(ref).max() else 'NOT CAUSAL'})")
    del model
    if args.device != "cpu":
        torch.cuda.empty_cache()
    log(f"  transformers bf16 + fp32 forward: {time.time() - t0:.1f} s")

    results = {"transformers bf16": compare(hf_bf16, ref)}
    numpy_ref = None
    if args.numpy_ref > 0:
        t1 = time.time()
        import reference_llama  # tests/model: an independent numpy forward pass
        numpy_ref = reference_llama.forward(path, [int(t) for t in ids[:args.numpy_ref]])
        log(f"  numpy reference ({args.numpy_ref} positions): {time.time() - t1:.1f} s")
        results["transformers fp32 vs numpy"] = compare(ref[:args.numpy_ref], numpy_ref)
    t0 = time.time()
    prefix = os.path.join(path, "ours")
    cmd = [args.tool, "--model", path, "--ids", ids_path, "--out", prefix, "--backend",
           args.backend, "--dtype", args.dtypes]
    if args.prefill > 0:
        cmd += ["--prefill", str(args.prefill)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.tool_timeout)
    log("  " + (proc.stdout + proc.stderr).strip().replace("\n", "\n  "))
    if proc.returncode != 0:
        raise RuntimeError(f"sqz-hf-logits exited {proc.returncode}")
    runs = ["cpu"] if args.backend == "cpu" else args.dtypes.split(",")
    for run in runs:
        ours = np.fromfile(f"{prefix}.{run}.f32", dtype=np.float32)
        ours = ours.reshape(len(ids), cfg["vocab_size"])
        results[f"ours {args.backend} {run}"] = compare(ours, ref)
        rel = np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)
        at = sorted({i for i in (0, 1, 63, 255, args.prefill - 1, args.prefill, len(ids) - 1)
                     if 0 <= i < len(ids)})
        log(f"  ours {run}: rel L2 at positions " + ", ".join(f"{i}: {rel[i]:.2e}" for i in at))
        if numpy_ref is not None:
            results[f"ours {run} vs numpy"] = compare(ours[:args.numpy_ref], numpy_ref)
    log(f"  ours: {time.time() - t0:.1f} s")
    if not args.keep:
        shutil.rmtree(path, ignore_errors=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tool", required=True, help="path of sqz-hf-logits")
    ap.add_argument("--models", default="llama3-8b,llama2-7b,qwen2-7b")
    ap.add_argument("--backend", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtypes", default="bf16,fp32", help="CudaBackend dtypes to run")
    ap.add_argument("--device", default="cuda", help="torch device for transformers")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--positions", type=int, default=512)
    ap.add_argument("--prefill", type=int, default=448,
                    help="positions in the prefill step; the rest are decode steps")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--tiny", action="store_true", help="toy sizes of the same structures")
    ap.add_argument("--workdir", default="", help="where checkpoints go (default: a temp dir, "
                    "in /dev/shm when it has 8 GB free)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--tool-timeout", type=float, default=300)
    ap.add_argument("--out-json", default="")
    ap.add_argument("--attn", default="", help="transformers attention implementation (eager, "
                    "sdpa; default: the library's default)")
    ap.add_argument("--numpy-ref", type=int, default=0,
                    help="also run tests/model/reference_llama.py on this many first positions")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"device {args.device}")
    base = args.workdir or None
    if not base and os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 8e9:
        base = "/dev/shm"  # memory-backed: the multi-GB checkpoints are written and read fast
    work = tempfile.mkdtemp(prefix="sqz-hf-parity-", dir=base)
    all_results, failed = {}, False
    try:
        for name in args.models.split(","):
            log(f"== {name}")
            try:
                all_results[name] = run_shape(name, args, work)
            except Exception as e:  # noqa: BLE001 - report and go on with the next shape
                traceback.print_exc()
                all_results[name] = {"error": str(e)}
                failed = True
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    log(f"\n{'model':<10} {'run':<27} {'max relL2':>10} {'median':>9} {'argmax':>9}  verdict")
    for name, res in all_results.items():
        if "error" in res:
            log(f"{name:<10} ERROR: {res['error']}")
            continue
        for run, m in res.items():
            baseline = run.startswith("transformers") or run.endswith("numpy")
            verdict = "baseline" if baseline else ("PASS" if passes(m) else "FAIL")
            failed = failed or verdict == "FAIL"
            log(f"{name:<10} {run:<27} {m['max_rel_l2']:>10.2e} {m['median_rel_l2']:>9.2e} "
                f"{m['argmax_agree']:>4}/{m['positions']:<4}  {verdict}")
            if m["flip_gaps_in_std"]:
                log(f"{'':<10} flips at top-2 gaps of "
                    + ", ".join(f"{g:.3f}" for g in m["flip_gaps_in_std"]) + " std")
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(all_results, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
