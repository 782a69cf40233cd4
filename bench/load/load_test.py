#!/usr/bin/env python3
"""Loopback load test of squeezed (not a test: a program that prints what it measured).

Starts squeezed (or uses --server), registers a few contexts, then N concurrent clients (one
channel each) send R greedy Generate requests in all over them (mixed SQUEEZED / DENSE, some
without a context) and report errors, time to first token (p50/p90/p99, as the client sees it and
as the server reports it), queueing and tokens/s. Exit status 1 when any request failed.

    .venv/bin/python bench/load/load_test.py --squeezed build/server/squeezed \\
        --stubs build/python --model ../shared/models/stories260K --clients 16 --requests 200
"""

import argparse
import datetime
import os
import platform
import queue
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "lib"))
import squeeze_testlib as lib  # noqa: E402

STORIES = [
    "Once upon a time, there was a little girl named Lily. She lived in a small house near the "
    "park with her mom, her dad and a big brown dog named Max. Every morning Lily and Max went to "
    "the park to play. They liked to run on the grass. One day, Lily saw a red ball under the "
    "bench. She picked it up and showed it to Max. Max wagged his tail and barked.",
    "One day, a little boy named Tom went to the beach with his dad. The sun was hot and the sand "
    "was soft. Tom wanted to build a big castle. He took his red bucket and his blue shovel and "
    "started to dig. His dad helped him carry water from the sea. Soon the castle was very tall.",
    "Once there was a small cat named Mittens. Mittens lived on a farm with a cow, a pig and many "
    "chickens. She liked to sleep in the warm sun near the barn. One morning Mittens heard a "
    "strange noise. It came from the big tree. She climbed up the tree and saw a baby bird.",
    "Sam had a green kite. Every windy day he ran up the hill behind his school to fly it. The "
    "kite went up and up until it was a small dot in the sky. One day the string broke and the "
    "kite flew away over the river. Sam was sad, but his friend Anna helped him make a new one.",
]
PROMPTS = [" Lily and Max", " The next day", " She was very", " He said", " They", " Then",
           " What happened next?", " The end of the story is"]


def percentile(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--squeezed", help="squeezed binary to start (else --server)")
    ap.add_argument("--server", help="address of a running squeezed")
    ap.add_argument("--model", help="model for the started squeezed")
    ap.add_argument("--stubs", required=True, help="folder with squeeze/v1/*_pb2.py")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for the started squeezed")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--contexts", type=int, default=3)
    ap.add_argument("--context-repeat", type=int, default=1,
                    help="each context is its story this many times (longer contexts)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per request at most")
    ap.add_argument("--baseline-requests", type=int, default=16,
                    help="first sent one at a time from one client, as the baseline (0: none)")
    args = ap.parse_args()
    if not args.server and not (args.squeezed and args.model):
        ap.error("give --server, or --squeezed and --model")
    lib.import_stubs(os.path.abspath(args.stubs))
    import grpc
    from squeeze.v1 import context_service_pb2 as ctx_pb
    from squeeze.v1 import context_service_pb2_grpc as ctx_grpc
    from squeeze.v1 import generation_service_pb2 as gen_pb
    from squeeze.v1 import generation_service_pb2_grpc as gen_grpc
    from squeeze.v1 import squeeze_options_pb2 as opt_pb

    server = None
    if args.server:
        address = args.server
    else:
        extra = [x for s in args.set for x in ("--set", s)]
        server = lib.Squeezed(args.squeezed, args=["--model", args.model] + extra)
        t0 = time.monotonic()
        server.start(timeout=600)
        print(f"squeezed ready in {time.monotonic() - t0:.1f} s on {server.address}")
        address = server.address
    try:
        channel = grpc.insecure_channel(address)
        ctx_stub = ctx_grpc.ContextServiceStub(channel)
        info = gen_grpc.GenerationServiceStub(channel).GetServerInfo(
            gen_pb.GetServerInfoRequest(), timeout=30)
        run_id = datetime.datetime.now().strftime("%H%M%S")
        names, t0 = [], time.monotonic()
        for i in range(args.contexts):
            text = " ".join([STORIES[i % len(STORIES)]] * args.context_repeat)
            c = ctx_stub.CreateContext(ctx_pb.CreateContextRequest(
                context_id=f"load-{run_id}-{i}", text=text.encode()), timeout=60)
            names.append((c.name, c.token_count))
        for name, _ in names:
            for c in ctx_stub.WatchContext(ctx_pb.WatchContextRequest(name=name), timeout=3600):
                if c.state == ctx_pb.FAILED:
                    raise SystemExit(f"{name} FAILED: {c.error}")
        ingest_s = time.monotonic() - t0

        # The request mix: 1 in 8 without a context; over a context 3 in 4 SQUEEZED (budget
        # 0.125 or 0.25), 1 in 4 DENSE.
        requests = []
        for i in range(args.requests):
            req = gen_pb.GenerateRequest(text=PROMPTS[i % len(PROMPTS)].encode())
            req.sampling.max_tokens = args.max_tokens
            req.sampling.temperature = 0.0
            req.sampling.ignore_eos = True
            if i % 8 != 7:
                req.context = names[i % len(names)][0]
                if i % 4 == 3:
                    req.attention.mode = opt_pb.AttentionOptions.DENSE
                else:
                    req.attention.mode = opt_pb.AttentionOptions.SQUEEZED
                    req.attention.kv_budget = 0.125 if i % 2 else 0.25
            requests.append(req)

        def run_phase(reqs, clients):
            """Sends reqs from `clients` threads (one channel each); returns the per-request
            (start, first token, end, tokens, final) tuples, the errors and the wall time."""
            work = queue.Queue()
            for r in reqs:
                work.put(r)
            results, errors, lock = [], [], threading.Lock()

            def client():
                ch = grpc.insecure_channel(address)
                stub = gen_grpc.GenerationServiceStub(ch)
                while True:
                    try:
                        req = work.get_nowait()
                    except queue.Empty:
                        break
                    start, first, n, final = time.monotonic(), None, 0, None
                    try:
                        for resp in stub.Generate(req, timeout=args.timeout):
                            if resp.HasField("chunk"):
                                if first is None and resp.chunk.token_ids:
                                    first = time.monotonic()
                                n += len(resp.chunk.token_ids)
                            else:
                                final = resp.final
                        with lock:
                            results.append((start, first, time.monotonic(), n, final))
                    except grpc.RpcError as e:
                        with lock:
                            errors.append(f"{e.code().name}: {e.details()}")
                ch.close()

            threads = [threading.Thread(target=client) for _ in range(clients)]
            wall0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return results, errors, time.monotonic() - wall0

        # Baseline in the same run: the first requests of the mix from a single client.
        base = run_phase(requests[:args.baseline_requests], 1) if args.baseline_requests else None
        results, errors, wall = run_phase(requests, args.clients)
    finally:
        if server is not None:
            server.terminate()

    ttft = [f - s for s, f, _, _, _ in results if f is not None]
    server_ttft = [r[4].timings.time_to_first_token_s for r in results]
    queued = [r[4].timings.queued_s for r in results]
    total = [e - s for s, _, e, _, _ in results]
    tokens = sum(r[3] for r in results)
    decode_rates = [(r[3] - 1) / (r[2] - r[1]) for r in results if r[3] > 1 and r[2] > r[1]]
    ms = lambda v: f"{1000 * v:.0f} ms"  # noqa: E731
    print(f"date: {datetime.datetime.now().isoformat(timespec='minutes')}; machine: "
          f"{platform.node()}, {cpu_model()}, {os.cpu_count()} cores, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"model: {info.model.name} ({info.model.layers} layers), backend {info.backend}; "
          f"contexts: {', '.join(str(n) for _, n in names)} tokens, ingested in {ingest_s:.1f} s")
    print(f"load: {args.clients} clients, {args.requests} requests of {args.max_tokens} tokens "
          f"(greedy, ignore_eos), 7/8 over a context (3/4 SQUEEZED, 1/4 DENSE)")
    print(f"results: {len(results)} ok, {len(errors)} errors in {wall:.1f} s")
    print(f"time to first token (client): p50 {ms(percentile(ttft, 50))}, p90 "
          f"{ms(percentile(ttft, 90))}, p99 {ms(percentile(ttft, 99))}")
    print(f"time to first token (server): p50 {ms(percentile(server_ttft, 50))}, p99 "
          f"{ms(percentile(server_ttft, 99))}; queued p50 {ms(percentile(queued, 50))}, p99 "
          f"{ms(percentile(queued, 99))}")
    print(f"request latency: p50 {ms(percentile(total, 50))}, p99 {ms(percentile(total, 99))}")
    print(f"throughput: {tokens} tokens in {wall:.1f} s = {tokens / wall:.1f} tokens/s, "
          f"{len(results) / wall:.2f} requests/s; per-request decode p50 "
          f"{statistics.median(decode_rates) if decode_rates else float('nan'):.1f} tokens/s")
    if base and base[0]:
        b_results, b_errors, b_wall = base
        b_tokens = sum(r[3] for r in b_results)
        b_ttft = [f - s for s, f, _, _, _ in b_results if f is not None]
        print(f"baseline, 1 client: {len(b_results)} requests ({len(b_errors)} errors), "
              f"{b_tokens / b_wall:.1f} tokens/s, time to first token p50 "
              f"{ms(percentile(b_ttft, 50))}; {args.clients} clients: "
              f"{(tokens / wall) / (b_tokens / b_wall):.2f}x the tokens/s")
        errors = errors + b_errors
    for e in sorted(set(errors))[:10]:
        print("error:", e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
