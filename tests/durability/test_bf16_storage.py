"""bf16 K/V storage (storage.kv_dtype=bf16) with the real squeezed on stories260K.

A context registered on a bf16 server takes about half the bytes of the same context on an fp32
server (GetContext's stored_bytes; K/V dominate a snapshot). The server rounds the snapshot before
persisting it, so greedy tokens (DENSE and SQUEEZED) are the same before and after a SIGKILL and
restart, when the snapshot is loaded back from RocksDB -- and the same again when the server is
restarted with kv_dtype=fp32, because every blob records how its K/V were stored. The comparison
is of log-probabilities, exactly: they differ from the fp32 server's (checked), so a server that
kept unrounded K/V in memory until its restart would fail it.

Environment: see durability_lib.py.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import durability_lib as dl  # noqa: E402

LENGTH = 360
MAX_TOKENS = 12


class Failure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def register(server, tokens):
    client = dl.Client(server.address)
    client.create("doc", tokens)
    return client, client.wait_ready("doc")


def generate(client, prompt, mode):
    """Greedy tokens and their log-probabilities (floats, compared exactly)."""
    req = dl.gen_pb.GenerateRequest(
        context="contexts/doc", token_ids=dl.ctx_pb.TokenIds(ids=prompt),
        sampling=dl.gen_pb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0,
                                          ignore_eos=True, logprobs=True),
        attention=dl.opt_pb.AttentionOptions(mode=mode))
    tokens, logprobs = [], []
    for r in client.gen.Generate(req, timeout=dl.RPC_TIMEOUT):
        if r.HasField("chunk"):
            tokens.extend(r.chunk.token_ids)
            logprobs.extend(r.chunk.logprobs)
    check(len(tokens) == MAX_TOKENS and len(logprobs) == MAX_TOKENS,
          f"{len(tokens)} tokens and {len(logprobs)} logprobs, asked for {MAX_TOKENS}")
    return tokens, logprobs


def greedy(client, prompt):
    return {m: generate(client, prompt, m) for m in (dl.DENSE, dl.SQUEEZED_MODE)}


def main():
    t_start = time.time()
    rng = dl.seeded(11)
    tokens = dl.random_tokens(rng, LENGTH)
    prompt = [1] + dl.random_tokens(rng, 5)
    bf16 = ["--set", "storage.kv_dtype=bf16"]
    with tempfile.TemporaryDirectory(prefix="sqz-bf16-") as tmp:
        fp32_server = dl.Server(dl.STORIES, os.path.join(tmp, "fp32")).start()
        try:
            client, ctx = register(fp32_server, tokens)
            fp32_bytes = ctx.stored_bytes
            fp32_tokens = greedy(client, prompt)
            client.close()
        finally:
            fp32_server.kill()

        data = os.path.join(tmp, "bf16")
        server = dl.Server(dl.STORIES, data, extra=bf16).start()
        try:
            client, ctx = register(server, tokens)
            bf16_bytes = ctx.stored_bytes
            before = greedy(client, prompt)
            client.close()
        finally:
            server.kill()
        check(bf16_bytes < 0.6 * fp32_bytes,
              f"bf16 storage {bf16_bytes} bytes, fp32 {fp32_bytes}: expected about half")

        for name, extra in (("bf16", bf16), ("fp32", [])):
            server = dl.Server(dl.STORIES, data, extra=extra).start()
            try:
                client = dl.Client(server.address)
                check(client.wait_ready("doc").stored_bytes == bf16_bytes,
                      f"restarted ({name}): stored bytes changed")
                after = greedy(client, prompt)
                client.close()
            except Exception:
                print("---- squeezed log (tail) ----\n" + server.tail(60), file=sys.stderr)
                raise
            finally:
                server.kill()
            check(after == before, f"restarted with kv_dtype={name}: {after}, before the restart "
                                   f"{before}")
    # The rounding shows in the log-probabilities (so the equality above would catch a server
    # that served unrounded K/V before its restart), not necessarily in the greedy tokens.
    agree = sum(a == b for m in before for a, b in zip(before[m][0], fp32_tokens[m][0]))
    diff = max(abs(a - b) for m in before for a, b in zip(before[m][1], fp32_tokens[m][1]))
    check(diff > 0, "bf16 and fp32 storage gave identical log-probabilities: no rounding?")
    print(f"stored bytes: fp32 {fp32_bytes}, bf16 {bf16_bytes} ({bf16_bytes / fp32_bytes:.2f}x); "
          f"tokens and log-probabilities equal before and after restarts (bf16, then fp32 "
          f"setting); against the fp32 server: {agree}/{2 * MAX_TOKENS} tokens equal, "
          f"log-probabilities within {diff:.2e}")
    print(f"bf16 storage test in {time.time() - t_start:.1f} s\nOK")


if __name__ == "__main__":
    main()
