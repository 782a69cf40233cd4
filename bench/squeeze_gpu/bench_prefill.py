"""Prefill mode of the Squeezed Attention kernel benchmark (bench.py --prefill), one process.

One request's user input of n_q tokens (256 and 1,024) against a registered 128K context, cut into
query blocks of 64 tokens, on the clustered random contexts of bench.py (same generator), times
from CUDA events around CUDA-graph replays with the L2 flushed before each repetition:
  dense     PrefillAttention over the whole context (no mask, with (m, l)) + causal
            PrefillAttention over the own tokens + MergeAttentionPartials
  squeezed  SqueezeSelect per block + SparsePrefillAttention + the same own-token part and merge
  parts     dense ctx, select, sparse attn (with the plan's key splits, and with one split),
            own+merge (each alone)
  sdpa ctx  torch SDPA of the queries over the context alone (reference for the context part)
Prints the ratios, the achieved attention FLOP rates (4 n_q hq d keys per part) and each case's
kernel times (profiler) of the selection and the sparse attention.
SQZ_BENCH_PREFILL_CASE=MODEL:N_Q (e.g. llama2-7b:1024) runs that case alone (for profilers);
SQZ_BENCH_BLOCKS_INNER=0/1 forces the sparse prefill's CTA order (SparsePrefillPlan::blocks_inner);
SQZ_BENCH_PREFILL_SPLITS=K its key splits (SparsePrefillParams::num_splits).
"""
import ctypes
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import bench

BLOCK = 64


def load(lib):
    vp, i32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)
    lib.sqzb_prefill_create.restype = vp
    lib.sqzb_prefill_create.argtypes = ([ctypes.c_int] * 10 + [vp] * 5 + [vp, vp, vp] +
                                        [ctypes.c_float])
    lib.sqzb_prefill_select.argtypes = [vp, vp]
    for name in ("sqzb_prefill_sparse", "sqzb_prefill_sparse_one_split", "sqzb_prefill_dense_ctx",
                 "sqzb_prefill_own_merge",
                 "sqzb_prefill_dense", "sqzb_prefill_squeezed"):
        getattr(lib, name).argtypes = [vp, vp, vp]
    lib.sqzb_prefill_selected.argtypes = [vp, i32p, i32p]
    lib.sqzb_prefill_destroy.argtypes = [vp]


def make_queries(n_q, hq, hkv, d, centres, gen):
    """bench.make_queries for many tokens at once: each (token, head) near 0.8 x the sum of 3
    random centres of its kv head, plus noise."""
    g = hq // hkv
    kc = centres.shape[1]
    idx = torch.randint(0, kc, (n_q, hq, 3), device="cuda", generator=gen)
    kv_of = (torch.arange(hq, device="cuda") // g).view(1, hq, 1).expand(n_q, hq, 3)
    mix = 0.8 * centres[kv_of, idx].sum(2)
    noise = 0.3 * bench.KEY_NORM / math.sqrt(d)
    return (mix + noise * torch.randn(n_q, hq, d, device="cuda", generator=gen)).to(torch.bfloat16)


def run_case(lib, timer, name, hq, hkv, d, n, n_q, ctx, gen, reps):
    k, v, cents, counts, offsets, centres, largest, kc = ctx
    q = make_queries(n_q, hq, hkv, d, centres, gen)
    own_k = (torch.randn(n_q, hkv, d, device="cuda", generator=gen) *
             (bench.KEY_NORM / math.sqrt(d))).to(torch.bfloat16)
    own_v = torch.randn(n_q, hkv, d, device="cuda", generator=gen).to(torch.bfloat16)
    h = lib.sqzb_prefill_create(n_q, BLOCK, hq, hkv, d, n, bench.SINK, bench.WINDOW, kc, largest,
                                k.data_ptr(), v.data_ptr(), cents.data_ptr(), counts.data_ptr(),
                                offsets.data_ptr(), q.data_ptr(), own_k.data_ptr(),
                                own_v.data_ptr(), bench.BUDGET)
    if not h:
        raise RuntimeError(lib.sqzb_last_error().decode())
    st = bench.stream
    try:
        out_dense = torch.empty(n_q, hq, d, dtype=torch.bfloat16, device="cuda")
        out_sqz = torch.empty_like(out_dense)
        out_ctx = torch.empty_like(out_dense)
        bench.check(lib, lib.sqzb_prefill_dense(h, out_dense.data_ptr(), st()))
        bench.check(lib, lib.sqzb_prefill_squeezed(h, out_sqz.data_ptr(), st()))
        bench.check(lib, lib.sqzb_prefill_dense_ctx(h, out_ctx.data_ptr(), st()))
        torch.cuda.synchronize()
        units = (n_q + BLOCK - 1) // BLOCK * hkv
        sel = (ctypes.c_int32 * units)()
        info = (ctypes.c_int32 * 5)()
        bench.check(lib, lib.sqzb_prefill_selected(h, sel, info))
        share = sum(sel) / (units * n)
        err = bench.rel_l2(out_sqz, out_dense)
        qs = q.permute(1, 0, 2).unsqueeze(0)  # [1, hq, n_q, d]
        ks, vs = k.unsqueeze(0), v.unsqueeze(0)

        def sdpa():
            return F.scaled_dot_product_attention(qs, ks, vs, enable_gqa=hq != hkv)

        err_sdpa, t_sdpa = None, None
        try:
            ref = sdpa()[0].permute(1, 0, 2)
            err_sdpa = bench.rel_l2(out_ctx, ref)
            del ref
            t_sdpa, _ = bench.time_graph(timer, sdpa, reps, "sdpa")
        except Exception as e:
            print(f"  sdpa {name}: {type(e).__name__}: {str(e).splitlines()[0][:120]}",
                  file=sys.stderr)

        def tg(fn, what):
            return bench.time_graph(timer, fn, reps, what)[0]

        t_dense = tg(lambda: bench.check(lib, lib.sqzb_prefill_dense(h, out_dense.data_ptr(),
                                                                      st())), "dense")
        t_ctx = tg(lambda: bench.check(lib, lib.sqzb_prefill_dense_ctx(h, out_ctx.data_ptr(),
                                                                        st())), "dense ctx")
        t_sel = tg(lambda: bench.check(lib, lib.sqzb_prefill_select(h, st())), "select")
        t_attn = tg(lambda: bench.check(lib, lib.sqzb_prefill_sparse(h, out_sqz.data_ptr(), st())),
                    "sparse")
        t_attn1 = tg(lambda: bench.check(lib, lib.sqzb_prefill_sparse_one_split(
            h, out_sqz.data_ptr(), st())), "sparse, one split")
        t_own = tg(lambda: bench.check(lib, lib.sqzb_prefill_own_merge(h, out_sqz.data_ptr(),
                                                                        st())), "own+merge")
        t_sqz, g_sqz = bench.time_graph(
            timer, lambda: bench.check(lib, lib.sqzb_prefill_squeezed(h, out_sqz.data_ptr(), st())),
            reps, "squeezed")
        eager = torch.empty_like(out_sqz)
        bench.check(lib, lib.sqzb_prefill_squeezed(h, eager.data_ptr(), st()))
        out_sqz.zero_()
        if g_sqz is not None:
            g_sqz.replay()
        torch.cuda.synchronize()
        replay = bench.rel_l2(out_sqz, eager) if g_sqz is not None else None
        kt_sel = bench.kernel_times(lambda: bench.check(lib, lib.sqzb_prefill_select(h, st())))
        kt_attn = bench.kernel_times(
            lambda: bench.check(lib, lib.sqzb_prefill_sparse(h, out_sqz.data_ptr(), st())))
        flops_ctx = 4.0 * n_q * hq * d * n
        flops_sparse = 4.0 * (n_q / units * hkv) * hq * d * sum(sel) / hkv  # per (token, head)
        return dict(name=name, n=n, n_q=n_q, dense=t_dense, ctx=t_ctx, sdpa=t_sdpa, select=t_sel,
                    attn=t_attn, attn1=t_attn1, own=t_own, sqz=t_sqz, share=share, err=err, err_sdpa=err_sdpa,
                    replay=replay, kernels={**kt_sel, **kt_attn}, tf_ctx=flops_ctx / (t_ctx * 1e-3) / 1e12,
                    tf_sparse=flops_sparse / (t_attn * 1e-3) / 1e12, info=list(info))
    finally:
        lib.sqzb_prefill_destroy(h)
        del q, own_k, own_v


def main(lib_path, quick):
    lib = bench.load(lib_path)
    load(lib)
    torch.manual_seed(0)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(4321)
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}; prefill, "
          f"blocks of {BLOCK}, budget {bench.BUDGET}, 5% centroids")
    timer = bench.Timer()
    n = 131072 if not quick else 32768
    rows = []
    t0 = time.time()
    only = os.environ.get("SQZ_BENCH_PREFILL_CASE")  # e.g. "llama2-7b:1024": that case alone
    for name, hq, hkv, d in [("llama3-8b", 32, 8, 128), ("llama2-7b", 32, 32, 128)]:
        if only and not only.startswith(name + ":"):
            continue
        ctx = bench.make_context(hkv, d, n, gen)
        for n_q in (256, 1024) if not only else (int(only.split(":")[1]),):
            r = run_case(lib, timer, name, hq, hkv, d, n, n_q, ctx, gen, reps=10)
            rows.append(r)
            print(f"  done {name} n_q={n_q} ({time.time() - t0:.0f} s): info {r['info']} "
                  f"share={r['share']:.3f} sqz/dense rel L2={r['err']:.3f} "
                  f"dense ctx/sdpa rel L2={r['err_sdpa']} graph-vs-eager={r['replay']} "
                  "kernels us: " + ", ".join(f"{k} {v:.1f}" for k, v in r["kernels"].items()),
                  flush=True)
        del ctx
        torch.cuda.empty_cache()
    print()
    print("| model | context | n_q | dense us | squeezed us | x dense | SDPA ctx us | dense ctx us |"
          " select us | sparse attn us | (1 split) us | own+merge us | keys read |"
          " dense ctx TFLOP/s | sparse TFLOP/s | sqz rel. L2 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['n'] // 1024}K | {r['n_q']} | {bench.fmt(r['dense'])} | "
              f"{bench.fmt(r['sqz'])} | {r['dense'] / r['sqz']:.2f} | {bench.fmt(r['sdpa'])} | "
              f"{bench.fmt(r['ctx'])} | {bench.fmt(r['select'])} | {bench.fmt(r['attn'])} | "
              f"{bench.fmt(r['attn1'])} | "
              f"{bench.fmt(r['own'])} | {r['share']:.3f} | {r['tf_ctx']:.0f} | "
              f"{r['tf_sparse']:.0f} | {r['err']:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1], "--quick" in sys.argv)
