"""Kernel benchmark of Squeezed Attention on the GPU (issue 9, item 2), one process.

Allocates clustered random contexts with torch, calls our kernels through the C ABI of
libsqz_squeeze_bench.so (ctypes) and times, with CUDA events around CUDA-graph replays (each
variant captured once with torch.cuda.graph, so Python's launch latency stays out; L2 flushed
before every repetition, by reading a 512 MB buffer (SQZ_BENCH_FLUSH=dirty: by writing it, which
leaves dirty lines for the timed kernel to write back), median of the repetitions):
  dense   our DecodeAttention over the whole context
  sdpa    torch scaled_dot_product_attention (GQA through enable_gqa)
  select  SqueezeSelect alone (centroid scores, normaliser, budget cut, segment lists), with the
          plan's choice of selection step for the device; a second table times the selection with
          each step forced (the single-block kernel, clusters of 8 and 16 CTAs per (request, kv
          head)) and checks that each gives the same segment list; a third table times it with
          the centroids scored once for the whole batch (grouped scoring, the default) and per
          request (SQZ_BENCH_UNGROUPED=1 makes that the default of the other tables), with the
          scoring kernel's own time, and checks that both give the same segment list
  attn    sparse DecodeAttention alone over the selected segments
  sqz     select + attn back to back (a table compares programmatic launches of the selection
          kernel and of the attention)
plus the device-to-device copy bandwidth measured in the same run, and the squeezed memory floor:
(centroid bytes + selected K/V bytes, every request counted) / copy bandwidth. "sqz eager" is the
squeezed pair launched from Python without a graph (host launch latency included).

Keys are clustered realistically: per kv head, k = 5% of the body cluster centres (random
directions, norm key_norm), each body key a centre plus Gaussian noise, laid out in cluster order
(sizes vary, every cluster non-empty); a centroid is the mean of its members. Queries sit near a
few centres, so attention (and the selection) concentrates as in trained models.

Usage: python3 bench.py LIB [--quick] [--select] [--prefill] [--cases NxB,...]  (--select: llama3-8b
at 128K and 512K only, batch 1 and 16, for the selection-step table; --prefill: the prefill mode,
bench_prefill.py; --cases: llama3-8b at the context lengths and batches named, e.g. 131072x1;
--model NAME: that model only, llama3-8b or llama2-7b).
SQZ_BENCH_SPARSE_CHUNK=K forces the sparse decode's split to chunks of K keys (0: the planner's);
SQZ_BENCH_SPARSE_STAGES / SQZ_BENCH_DENSE_STAGES=2 or 3 force the decode kernel's tile ring
(DecodePlan::stages) of the sparse / dense attention.
"""
import ctypes
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SINK, WINDOW = 4, 100
CENTROID_FRACTION = 0.05
BUDGET = 0.125
KEY_NORM, KEY_NOISE = 12.0, 0.45  # noise per coordinate: KEY_NOISE * KEY_NORM / sqrt(d)


def load(lib_path):
    lib = ctypes.CDLL(lib_path)
    vp, i32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)
    lib.sqzb_create.restype = vp
    lib.sqzb_create.argtypes = [ctypes.c_int] * 9 + [vp] * 3 + [vp, vp, vp, ctypes.c_float,
                                                                ctypes.c_int]
    lib.sqzb_last_error.restype = ctypes.c_char_p
    lib.sqzb_select.argtypes = [vp, vp]
    for name in ("sqzb_sparse_attention", "sqzb_squeezed", "sqzb_dense"):
        getattr(lib, name).argtypes = [vp, vp, vp]
    lib.sqzb_selected.argtypes = [vp, i32p, i32p]
    lib.sqzb_destroy.argtypes = [vp]
    lib.sqzb_set_select_ctas.argtypes = [vp, ctypes.c_int]
    lib.sqzb_set_grouped_scoring.argtypes = [vp, ctypes.c_int]
    lib.sqzb_set_chained.argtypes = [vp, ctypes.c_int]
    return lib


def check(lib, rc):
    if rc != 0:
        raise RuntimeError(lib.sqzb_last_error().decode())


class Timer:
    """Median of CUDA-event times (ms) with the L2 flushed before every repetition.

    Two ways to flush (SQZ_BENCH_FLUSH): "clean" (the default) reads a 512 MB buffer, so the L2
    holds clean lines of it, as in a decode step where the kernels before attention read weights;
    "dirty" writes the buffer (zero_, the usual benchmark idiom), which leaves up to the whole L2
    dirty, so the timed kernel also pays for writing those lines back to memory."""

    def __init__(self):
        self.mode = os.environ.get("SQZ_BENCH_FLUSH", "clean")
        if self.mode not in ("clean", "dirty"):
            raise SystemExit(f"SQZ_BENCH_FLUSH must be clean or dirty, not {self.mode!r}")
        self.flush = torch.zeros(512 * 1024 * 1024, dtype=torch.uint8, device="cuda")
        self.sink = torch.zeros((), dtype=torch.int64, device="cuda")

    def flush_l2(self):
        if self.mode == "dirty":
            self.flush.zero_()
        else:
            torch.sum(self.flush, 0, dtype=torch.int64, out=self.sink)

    WARMUP_SECONDS = 0.2  # let the clocks rise before the first timed variant (bench/cuda)

    def __call__(self, fn, reps=15, warmup=3):
        start, done = time.perf_counter(), 0
        while done < warmup or time.perf_counter() - start < self.WARMUP_SECONDS:
            fn()
            torch.cuda.synchronize()
            done += 1
        times = []
        for _ in range(reps):
            self.flush_l2()
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times)


def stream():
    return torch.cuda.current_stream().cuda_stream


def capture(fn):
    """A CUDA graph of one call of fn (warmed up on a side stream first, as torch advises)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def time_graph(timer, fn, reps, what):
    """Median ms of graph replays of fn; eager timing (marked) if the capture fails."""
    try:
        g = capture(fn)
        return timer(g.replay, reps=reps), g
    except Exception as e:
        print(f"  capture of {what} failed ({type(e).__name__}: {str(e)[:100]}); eager timing",
              file=sys.stderr)
        torch.cuda.synchronize()
        return timer(fn, reps=reps), None


def kernel_name(kernel):
    """A profiler kernel name without namespaces and argument lists: 'BlockProbsKernel<128>'."""
    name = kernel.replace("(anonymous namespace)::", "").replace("<unnamed>::", "").split("(")[0]
    head = name.split("<")[0]
    return name[head.rfind("::") + 2:] if "::" in head else name.split(" ")[-1]


def kernel_times(fn, reps=5):
    """Mean device time (us) per call of each kernel fn launches (torch.profiler, no L2 flush):
    where the squeezed time goes. {} if the profiler is unavailable."""
    try:
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        times = {}
        for e in prof.key_averages():
            total = getattr(e, "device_time_total", None)
            if total is None:
                total = getattr(e, "cuda_time_total", 0)
            if total <= 0:
                continue
            name = e.key
            for known in ("GroupedScoreKernel", "ScoreKernel", "ClusterSelectKernel", "SelectKernel",
                          "DecodeMmaChunkKernel",
                          "DecodeMergeKernel"):
                if known in e.key:
                    name = known
                    break
            if name == e.key:
                name = kernel_name(name)
            times[name] = times.get(name, 0.0) + total / reps
        return times
    except Exception as e:
        print(f"  profiler: {type(e).__name__}: {str(e)[:100]}", file=sys.stderr)
        return {}


def copy_bandwidth(timer):
    """Device-to-device copy of 4 GiB: bytes read + written over the median time (GB/s)."""
    n = 4 * 1024**3
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src), reps=10)
    del src, dst
    return 2 * n / (ms * 1e-3) / 1e9


def make_context(hkv, d, n_tokens, gen):
    """Returns k, v [hkv][n][d] bf16, centroids [hkv][kc][d] bf16, counts/offsets int32, the
    generating centres (fp32) and the largest cluster."""
    body = n_tokens - SINK - WINDOW
    kc = max(1, round(CENTROID_FRACTION * body))
    k = torch.empty(hkv, n_tokens, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(hkv, n_tokens, d, dtype=torch.bfloat16, device="cuda", generator=gen)
    cents = torch.empty(hkv, kc, d, dtype=torch.bfloat16, device="cuda")
    counts = torch.empty(hkv, kc, dtype=torch.int32, device="cuda")
    offsets = torch.zeros(hkv, kc + 1, dtype=torch.int32, device="cuda")
    centres_all = []
    noise = KEY_NOISE * KEY_NORM / math.sqrt(d)
    largest = 1
    for h in range(hkv):
        centres = torch.randn(kc, d, device="cuda", generator=gen)
        centres = centres / centres.norm(dim=1, keepdim=True) * KEY_NORM
        # Every cluster non-empty; the rest of the keys assigned with skewed popularity.
        weights = torch.rand(kc, device="cuda", generator=gen) ** 2 + 0.05
        extra = torch.multinomial(weights, body - kc, replacement=True, generator=gen)
        assign = torch.cat([torch.arange(kc, device="cuda"), extra]).sort().values
        cnt = torch.bincount(assign, minlength=kc)
        largest = max(largest, int(cnt.max()))
        keys = centres[assign] + noise * torch.randn(body, d, device="cuda", generator=gen)
        mean = torch.zeros(kc, d, device="cuda").index_add_(0, assign, keys) / cnt[:, None]
        k[h, SINK:SINK + body] = keys.to(torch.bfloat16)
        other = torch.randn(SINK + WINDOW, d, device="cuda", generator=gen) * (KEY_NORM /
                                                                                math.sqrt(d))
        k[h, :SINK] = other[:SINK].to(torch.bfloat16)
        k[h, SINK + body:] = other[SINK:].to(torch.bfloat16)
        cents[h] = mean.to(torch.bfloat16)
        counts[h] = cnt.to(torch.int32)
        offsets[h, 1:] = torch.cumsum(cnt, 0).to(torch.int32)
        centres_all.append(centres)
        del keys, mean, extra, assign
    return k, v, cents, counts, offsets, torch.stack(centres_all), largest, kc


def make_queries(batch, hq, hkv, d, centres, gen):
    """Each query head near 0.8 x the sum of 3 random centres of its kv head, plus noise: its
    scores against those clusters sit ~10 (natural log units) above the bulk."""
    g = hq // hkv
    kc = centres.shape[1]
    q = torch.empty(batch, hq, d, device="cuda")
    for b in range(batch):
        for h in range(hq):
            idx = torch.randint(0, kc, (3,), device="cuda", generator=gen)
            mix = 0.8 * centres[h // g][idx].sum(0)
            q[b, h] = mix + 0.3 * KEY_NORM / math.sqrt(d) * torch.randn(d, device="cuda",
                                                                       generator=gen)
    return q.to(torch.bfloat16)


def rel_l2(a, b):
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_case(lib, timer, bw, sms, name, hq, hkv, d, n_tokens, batch, gen, reps):
    k, v, cents, counts, offsets, centres, largest, kc = make_context(hkv, d, n_tokens, gen)
    q = make_queries(batch, hq, hkv, d, centres, gen)
    h = lib.sqzb_create(batch, hq, hkv, d, n_tokens, SINK, WINDOW, kc, largest, k.data_ptr(),
                        v.data_ptr(), cents.data_ptr(), counts.data_ptr(), offsets.data_ptr(),
                        q.data_ptr(), BUDGET, sms)
    if not h:
        raise RuntimeError(lib.sqzb_last_error().decode())
    try:
        out_dense = torch.empty(batch, hq, d, dtype=torch.bfloat16, device="cuda")
        out_sqz = torch.empty_like(out_dense)
        check(lib, lib.sqzb_dense(h, out_dense.data_ptr(), stream()))
        check(lib, lib.sqzb_squeezed(h, out_sqz.data_ptr(), stream()))
        torch.cuda.synchronize()
        sel = (ctypes.c_int32 * (batch * hkv))()
        plan = (ctypes.c_int32 * 5)()
        check(lib, lib.sqzb_selected(h, sel, plan))
        selected = sum(sel)  # keys over all (request, kv head), sink and window included
        # SDPA: [B, H, 1, d] against [B, Hkv, n, d] (the context shared by the batch: expand).
        qs = q.view(batch, hq, 1, d)
        ks = k.unsqueeze(0).expand(batch, -1, -1, -1)
        vs = v.unsqueeze(0).expand(batch, -1, -1, -1)

        def sdpa():
            return F.scaled_dot_product_attention(qs, ks, vs, enable_gqa=hq != hkv)

        sdpa_err, t_sdpa = None, None
        try:
            ref = sdpa()
            sdpa_err = rel_l2(out_dense, ref.view(batch, hq, d))
            sqz_vs_sdpa = rel_l2(out_sqz, ref.view(batch, hq, d))
            del ref
            t_sdpa, _ = time_graph(timer, sdpa, reps, "sdpa")
        except Exception as e:  # a shape or a size SDPA refuses
            sqz_vs_sdpa = rel_l2(out_sqz, out_dense)
            print(f"  sdpa {name}: {type(e).__name__}: {str(e).splitlines()[0][:120]}",
                  file=sys.stderr)
        eager = out_sqz.clone()
        t_dense, _ = time_graph(
            timer, lambda: check(lib, lib.sqzb_dense(h, out_dense.data_ptr(), stream())), reps,
            "dense")
        t_sel, _ = time_graph(timer, lambda: check(lib, lib.sqzb_select(h, stream())), reps,
                              "select")
        # The selection step forced to each path (graph replays), then back to the plan's choice;
        # every path must reproduce the plan's selected key counts.
        auto_ctas = lib.sqzb_set_select_ctas(h, 0)
        sel_paths = {}
        for ctas in (1, 8, 16):
            if lib.sqzb_set_select_ctas(h, ctas) != ctas:
                continue
            try:
                check(lib, lib.sqzb_select(h, stream()))
                t, _ = time_graph(timer, lambda: check(lib, lib.sqzb_select(h, stream())), reps,
                                  f"select/{ctas}")
                torch.cuda.synchronize()
                got = (ctypes.c_int32 * (batch * hkv))()
                check(lib, lib.sqzb_selected(h, got, plan))
                sel_paths[ctas] = (t, list(got) == list(sel))
            except RuntimeError as e:  # e.g. clusters of 16 that the device cannot schedule
                print(f"  select with {ctas} CTAs: {str(e)[:120]}", file=sys.stderr)
        lib.sqzb_set_select_ctas(h, 0)
        # Scoring grouped (one group: the batch shares its context) and per request, at the
        # plan's selection step; both must give the plan's selected key counts. Then back to the
        # default (grouped unless SQZ_BENCH_UNGROUPED=1).
        score_paths = {}
        for grouped in (1, 0):
            lib.sqzb_set_grouped_scoring(h, grouped)
            check(lib, lib.sqzb_select(h, stream()))
            t, _ = time_graph(timer, lambda: check(lib, lib.sqzb_select(h, stream())), reps,
                              f"select/grouped={grouped}")
            torch.cuda.synchronize()
            got = (ctypes.c_int32 * (batch * hkv))()
            check(lib, lib.sqzb_selected(h, got, plan))
            kt = kernel_times(lambda: check(lib, lib.sqzb_select(h, stream())))
            score_us = kt.get("GroupedScoreKernel" if grouped else "ScoreKernel")
            score_paths[grouped] = (t, score_us, list(got) == list(sel))
        lib.sqzb_set_grouped_scoring(
            h, 0 if os.environ.get("SQZ_BENCH_UNGROUPED") == "1" else 1)
        t_attn, _ = time_graph(
            timer, lambda: check(lib, lib.sqzb_sparse_attention(h, out_sqz.data_ptr(), stream())),
            reps, "attn")
        # The pair with programmatic launches (bit 0: the selection after the scoring, bit 1: the
        # attention after the selection), then back to plain launches (the default).
        t_chain = {}
        for mode in (1, 2, 3):
            lib.sqzb_set_chained(h, mode)
            t_chain[mode], _ = time_graph(
                timer, lambda: check(lib, lib.sqzb_squeezed(h, out_sqz.data_ptr(), stream())),
                reps, f"squeezed, programmatic mode {mode}")
        lib.sqzb_set_chained(h, 0)
        t_sqz, g_sqz = time_graph(
            timer, lambda: check(lib, lib.sqzb_squeezed(h, out_sqz.data_ptr(), stream())), reps,
            "squeezed")
        out_sqz.zero_()
        if g_sqz is not None:
            g_sqz.replay()
        else:
            check(lib, lib.sqzb_squeezed(h, out_sqz.data_ptr(), stream()))
        torch.cuda.synchronize()
        replay_diff = rel_l2(out_sqz, eager)  # a replayed graph computes what the eager call did
        t_eager = timer(lambda: check(lib, lib.sqzb_squeezed(h, out_sqz.data_ptr(), stream())),
                        reps=reps)
        kernels = kernel_times(lambda: check(lib, lib.sqzb_squeezed(h, out_sqz.data_ptr(),
                                                                     stream())))
        row = 2 * d * 2  # K and V bytes per key
        cent_bytes = batch * hkv * kc * d * 2  # read once per request
        sel_bytes = selected * row
        dense_bytes = batch * hkv * n_tokens * row
        floor_ms = (cent_bytes + sel_bytes) / (bw * 1e9) * 1e3
        dense_floor_ms = dense_bytes / (bw * 1e9) * 1e3
        res = dict(name=name, n=n_tokens, batch=batch, dense=t_dense, sdpa=t_sdpa, select=t_sel,
                   attn=t_attn, sqz=t_sqz, sqz_chain=t_chain, floor=floor_ms, dense_floor=dense_floor_ms,
                   share=selected / (batch * hkv * n_tokens), err_dense_sdpa=sdpa_err,
                   err_sqz=sqz_vs_sdpa, plan=list(plan), kc=kc, eager=t_eager,
                   replay_diff=replay_diff, kernels=kernels, auto_ctas=auto_ctas,
                   sel_paths=sel_paths, score_paths=score_paths,
                   cent_once_us=hkv * kc * d * 2 / (bw * 1e9) * 1e6)
        return res
    finally:
        lib.sqzb_destroy(h)
        del k, v, cents, counts, offsets, centres, q
        torch.cuda.empty_cache()


def fmt(x, scale=1e3):
    return "n/a" if x is None else f"{x * scale:.1f}"


def path_cell(paths, key, same_at):
    """A timed path of a table: its time (us), marked DIFFERS when its selection (paths[key]
    [same_at]) differs from the plan's choice; n/a when the path did not run."""
    if key not in paths:
        return "n/a"
    return f"{fmt(paths[key][0])}{'' if paths[key][same_at] else ' DIFFERS'}"


def print_report(rows):
    print()
    print("| model | context | batch | dense us | SDPA us | select us | attn us | squeezed us |"
          " x dense | x SDPA | keys read | floor us | sqz / floor | dense / its floor |"
          " sqz eager us | sqz rel. L2 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sp_dense = r["dense"] / r["sqz"]
        sp_sdpa = "n/a" if r["sdpa"] is None else f"{r['sdpa'] / r['sqz']:.2f}"
        print(f"| {r['name']} | {r['n'] // 1024}K | {r['batch']} | {fmt(r['dense'])} | "
              f"{fmt(r['sdpa'])} | {fmt(r['select'])} | {fmt(r['attn'])} | {fmt(r['sqz'])} | "
              f"{sp_dense:.2f} | {sp_sdpa} | {r['share']:.3f} | {fmt(r['floor'])} | "
              f"{r['sqz'] / r['floor']:.2f} | {r['dense'] / r['dense_floor']:.2f} | "
              f"{fmt(r['eager'])} | {r['err_sqz']:.3f} |")
    print()
    print("Programmatic launches (a kernel's CTAs scheduled during the tail of the kernel before;"
          " same outputs) against plain launches (the default), squeezed pair, graph replays, us:")
    print("| model | context | batch | plain | selection after scoring | attention after"
          " selection | both | plain / both |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["sqz_chain"]
        print(f"| {r['name']} | {r['n'] // 1024}K | {r['batch']} | {fmt(r['sqz'])} |"
              f" {fmt(c[1])} | {fmt(c[2])} | {fmt(c[3])} | {r['sqz'] / c[3]:.3f} |")
    print()
    print("Selection step by path (SqueezeSelect alone, graph replays, us; same: the path's"
          " selected key counts equal the plan's choice's):")
    print("| model | context | batch | plan's CTAs | 1 CTA (single-block) | 8 CTAs | 16 CTAs |"
          " 1 / 8 | 1 / 16 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p = r["sel_paths"]

        def ratio(c):
            return "n/a" if 1 not in p or c not in p else f"{p[1][0] / p[c][0]:.2f}"

        print(f"| {r['name']} | {r['n'] // 1024}K | {r['batch']} | {r['auto_ctas']} |"
              f" {path_cell(p, 1, 1)} | {path_cell(p, 8, 1)} | {path_cell(p, 16, 1)} |"
              f" {ratio(8)} | {ratio(16)} |")
    print()
    print("Scoring grouped (the batch's centroids scored once per chunk) vs per request (select us:"
          " SqueezeSelect alone, graph replays; score us: the scoring kernel, profiler; same: the"
          " selected key counts equal the plan's; read once: the centroid bytes over the copy"
          " bandwidth):")
    print("| model | context | batch | select grouped | select per request | score grouped |"
          " score per request | per request / grouped (score) | score grouped / read once |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        p = r["score_paths"]

        def us(k):
            return "n/a" if k not in p or p[k][1] is None else f"{p[k][1]:.1f}"

        ratio = ("n/a" if us(0) == "n/a" or us(1) == "n/a" or p[1][1] == 0
                 else f"{p[0][1] / p[1][1]:.2f}")
        once = "n/a" if us(1) == "n/a" else f"{p[1][1] / r['cent_once_us']:.2f}"
        print(f"| {r['name']} | {r['n'] // 1024}K | {r['batch']} | {path_cell(p, 1, 2)} |"
              f" {path_cell(p, 0, 2)} | {us(1)} | {us(0)} | {ratio} | {once} |")


def main():
    if "--prefill" in sys.argv:
        import bench_prefill

        bench_prefill.main(sys.argv[1], "--quick" in sys.argv)
        return
    lib = load(sys.argv[1])
    quick = "--quick" in sys.argv
    torch.manual_seed(0)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"device: {torch.cuda.get_device_name(0)}, {sms} SMs, torch {torch.__version__}")
    timer = Timer()
    bw = copy_bandwidth(timer)
    print(f"copy bandwidth (read + write): {bw:.0f} GB/s; L2 flush before each repetition:"
          f" {timer.mode}")
    models = [("llama3-8b", 32, 8, 128), ("llama2-7b", 32, 32, 128)]
    lengths = [32768, 131072, 524288] if not quick else [32768]
    batches = (1, 16)
    if "--select" in sys.argv:
        models, lengths = models[:1], [131072, 524288]
    if "--cases" in sys.argv:  # e.g. --cases 131072x1,524288x1 (the first model only)
        pairs = [c.split("x") for c in sys.argv[sys.argv.index("--cases") + 1].split(",")]
        if "--model" not in sys.argv:
            models = models[:1]
        lengths = sorted({int(n) for n, _ in pairs})
        batches = sorted({int(b) for _, b in pairs})
    if "--model" in sys.argv:  # e.g. --model llama2-7b
        models = [m for m in models if m[0] == sys.argv[sys.argv.index("--model") + 1]]
    rows = []
    t0 = time.time()
    for name, hq, hkv, d in models:
        for n in lengths:
            for batch in batches:
                reps = 15 if n * batch * hkv <= 131072 * 16 * 8 else 7
                r = run_case(lib, timer, bw, sms, name, hq, hkv, d, n, batch, gen, reps)
                rows.append(r)
                print(f"  done {name} n={n} batch={batch} ({time.time() - t0:.0f} s): "
                      f"plans {r['plan']} kc={r['kc']} share={r['share']:.3f} "
                      f"err dense/sdpa={r['err_dense_sdpa']} sqz/ref={r['err_sqz']:.3f} "
                      f"graph-vs-eager={r['replay_diff']:.1e} kernels us: " +
                      ", ".join(f"{k} {v:.1f}" for k, v in r["kernels"].items()),
                      flush=True)
    print_report(rows)

if __name__ == "__main__":
    main()
