"""PyTorch SDPA baseline for bench/cuda: decode attention (one query token, GQA 32q/8kv, d=128)
at 32K and 128K context, batch 1 and 16, and causal prefill at 4K and 32K, timed with CUDA events
(median). Run on the GPU machine in the same call as sqz_cuda_bench; prints one table."""
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


WARMUP_SECONDS = 0.2  # as bench/cuda's TimeMs: let the clocks rise before the first variant


def time_ms(fn, warmup=3, reps=30):
    start = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - start < WARMUP_SECONDS:
        fn()
        torch.cuda.synchronize()
        done += 1
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


BACKENDS = {
    "default": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def run(name, backend, q, k, v, causal, reps):
    def call():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    try:
        if backend is None:
            return time_ms(call, reps=reps)
        with sdpa_kernel([backend]):
            return time_ms(call, reps=reps)
    except Exception as e:  # a backend that refuses the shape
        print(f"  {name}: {type(e).__name__}: {str(e).splitlines()[0][:100]}", file=sys.stderr)
        return None


def main():
    torch.manual_seed(0)
    dev = "cuda"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(f"{'sdpa decode (32q/8kv, d=128)':34s} {'backend':>10s} {'us':>10s} {'KV GB/s':>9s}")
    for ctx in (32768, 131072):
        for batch in (1, 16):
            sets = max(1, (1 << 30) // (batch * 2 * 8 * ctx * 128 * 2))
            kv = [(torch.randn(batch, 8, ctx, 128, device=dev, dtype=torch.bfloat16),
                   torch.randn(batch, 8, ctx, 128, device=dev, dtype=torch.bfloat16))
                  for _ in range(sets)]
            q = torch.randn(batch, 32, 1, 128, device=dev, dtype=torch.bfloat16)
            kv_bytes = batch * 2 * 8 * ctx * 128 * 2
            for bname, backend in BACKENDS.items():
                i = [0]

                def step():
                    k, v = kv[i[0] % sets]
                    i[0] += 1
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

                try:
                    if backend is None:
                        ms = time_ms(step)
                    else:
                        with sdpa_kernel([backend]):
                            ms = time_ms(step)
                except Exception as e:
                    print(f"  {bname}: {type(e).__name__}: {str(e).splitlines()[0][:100]}",
                          file=sys.stderr)
                    continue
                print(f"{f'ctx {ctx // 1024}K batch {batch}':34s} {bname:>10s} {ms * 1e3:10.1f} "
                      f"{kv_bytes / (ms * 1e-3) / 1e9:9.0f}")
            del kv
            torch.cuda.empty_cache()
    print(f"\n{'sdpa prefill (causal, 32q/8kv)':34s} {'backend':>10s} {'ms':>10s} {'TFLOP/s':>9s}")
    for d in (128, 64):
        for n in (4096, 32768):
            q = torch.randn(1, 32, n, d, device=dev, dtype=torch.bfloat16)
            k = torch.randn(1, 8, n, d, device=dev, dtype=torch.bfloat16)
            v = torch.randn(1, 8, n, d, device=dev, dtype=torch.bfloat16)
            flops = 2.0 * 2.0 * n * n / 2.0 * d * 32
            for bname, backend in BACKENDS.items():
                ms = run(bname, backend, q, k, v, True, 5 if n > 8192 else 20)
                if ms is not None:
                    print(f"{f'n {n // 1024}K d {d}':34s} {bname:>10s} {ms:10.3f} "
                          f"{flops / (ms * 1e-3) / 1e12:9.1f}")


if __name__ == "__main__":
    main()
