"""Residency within a memory budget (issue 6, "Done when" 4).

squeezed runs with engine.memory.resident_contexts_mb = 1 and three stories260K contexts whose
snapshots are each a little over a third of a MiB: two fit, three do not (checked from the
sqz_context_resident_bytes gauge, not assumed). Greedy queries over the three in turn (round
robin, several rounds, DENSE and SQUEEZED) all succeed and give the tokens of a server with an
ample budget; least recently used contexts are evicted and loaded again from RocksDB, and every
eviction and load is counted (sqz_context_evictions_total, sqz_context_residency_loads_total);
a repeated query on a resident context is a hit (sqz_context_residency_hits_total); resident bytes
never exceed the budget. Concurrent queries over the three (two fit at once) all succeed with the
same tokens: a query whose context does not fit waits for a lease to be released
(server.limits.context_load_wait_s) instead of being refused. Deleting a resident context frees its bytes and count in
the gauges.

Environment: see durability_lib.py.
"""

import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import durability_lib as dl  # noqa: E402

MAX_TOKENS = 8
ROUNDS = 4
HIT_QUERIES = 6
BUDGET_MB = 1
BUDGET = BUDGET_MB << 20
# Tokens per context: a stories260K snapshot takes ~1.4 KB per token (5 layers x 4 KV heads x
# 8 dims x K and V in fp32, plus positions and centroids), so ~360 tokens is ~0.48 MiB.
LENGTH = 360
LOADS = "sqz_context_residency_loads_total"
EVICTIONS = "sqz_context_evictions_total"
HITS = "sqz_context_residency_hits_total"
RESIDENT_BYTES = "sqz_context_resident_bytes"
RESIDENT = "sqz_context_resident"


class Failure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def reference(pool, prompt):
    """Greedy tokens of each context on a server whose budget holds all of them."""
    with tempfile.TemporaryDirectory(prefix="sqz-residency-ref-") as tmp:
        server = dl.Server(dl.STORIES, os.path.join(tmp, "data")).start()
        client = dl.Client(server.address)
        try:
            for cid, tokens in pool.items():
                client.create(cid, tokens)
            ref = {}
            for cid in pool:
                client.wait_ready(cid)
                ref[cid] = {m: client.generate(cid, prompt, m, MAX_TOKENS)
                            for m in (dl.DENSE, dl.SQUEEZED_MODE)}
        finally:
            client.close()
            server.kill()
    return ref


def concurrent_queries(client, ids, prompt, server, rounds=3, max_tokens=64):
    """One long query per context at once: a context that cannot be made resident while the
    other two are in use waits for room, so every query runs and gives the ample-budget server's
    tokens (checked against a sequential run first); resident bytes stay within the budget."""
    expected = {cid: client.generate(cid, prompt, dl.DENSE, max_tokens) for cid in ids}
    outcome = {"ok": 0}
    lock = threading.Lock()
    errors = []

    def one(cid):
        try:
            tokens, err = dl.rpc_code(client.generate, cid, prompt, dl.DENSE, max_tokens)
            with lock:
                check(err is None, f"{cid}: concurrent query failed: "
                                   f"{err and err.code()} {err and err.details()}")
                check(tokens == expected[cid], f"{cid}: concurrent query gave {tokens}")
                outcome["ok"] += 1
        except Exception as e:  # reported below
            errors.append(e)

    for _ in range(rounds):
        threads = [threading.Thread(target=one, args=(cid,)) for cid in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        m = server.metrics()
        check(m[RESIDENT_BYTES] <= BUDGET, f"resident {m[RESIDENT_BYTES]} bytes over budget")
    check(outcome["ok"] == rounds * len(ids), f"concurrent queries: {outcome}")
    return outcome


def main():
    t_start = time.time()
    rng = dl.seeded(4)
    pool = {f"resident-{k}": dl.random_tokens(rng, LENGTH) for k in "abc"}
    prompt = [1] + dl.random_tokens(rng, 5)
    ref = reference(pool, prompt)
    ids = list(pool)

    tmp = tempfile.TemporaryDirectory(prefix="sqz-residency-")
    server = dl.Server(dl.STORIES, os.path.join(tmp.name, "data"), metrics=True,
                       extra=["--set", f"engine.memory.resident_contexts_mb={BUDGET_MB}"]).start()
    client = dl.Client(server.address)
    try:
        client.create(ids[0], pool[ids[0]])
        first = client.wait_ready(ids[0])
        check(first.resident, f"{ids[0]}: READY but not resident with an empty budget")
        size = server.metrics()[RESIDENT_BYTES]
        check(2 * size <= BUDGET < 3 * size,
              f"one snapshot takes {size:.0f} bytes: two must fit in {BUDGET} and three not "
              "(adjust LENGTH)")
        print(f"snapshot of {LENGTH} tokens: {size:.0f} resident bytes ({first.stored_bytes} "
              f"stored); budget {BUDGET} bytes", flush=True)
        for cid in ids[1:]:
            client.create(cid, pool[cid])
        for cid in ids[1:]:
            client.wait_ready(cid)
        m = server.metrics()
        check(m[RESIDENT] == 2 and m[RESIDENT_BYTES] == 2 * size and m[EVICTIONS] >= 1,
              f"after three ingestions: {m[RESIDENT]} resident, {m[RESIDENT_BYTES]} bytes, "
              f"{m[EVICTIONS]} evictions; expected 2, {2 * size}, >= 1")
        resident = [cid for cid in ids if client.get(cid).resident]
        check(len(resident) == 2, f"GetContext says {resident} are resident")

        queries = misses = 0
        t_miss = 0.0
        t_rr = time.time()
        for rnd in range(ROUNDS):
            for cid in ids:
                mode = (dl.DENSE, dl.SQUEEZED_MODE)[(rnd + ids.index(cid)) % 2]
                before = server.metrics()
                t0 = time.time()
                tokens = client.generate(cid, prompt, mode, MAX_TOKENS)
                dt = time.time() - t0
                after = server.metrics()
                queries += 1
                check(tokens == ref[cid][mode], f"round {rnd}, {cid}: {tokens}; a server with "
                      f"an ample budget gives {ref[cid][mode]}")
                loads = after[LOADS] - before[LOADS]
                hits = after[HITS] - before[HITS]
                evictions = after[EVICTIONS] - before[EVICTIONS]
                check(loads + hits == 1, f"{cid}: {loads} loads and {hits} hits for one query")
                check(after[RESIDENT_BYTES] <= BUDGET and after[RESIDENT] <= 2,
                      f"resident {after[RESIDENT_BYTES]} bytes in {after[RESIDENT]} contexts "
                      f"over the {BUDGET}-byte budget")
                misses += loads
                if loads:
                    t_miss += dt
                if rnd > 0:
                    # Cycling over three with room for two, least recently used first: every
                    # query loads its context and evicts another.
                    check(loads == 1 and evictions == 1,
                          f"round {rnd}, {cid}: {loads} loads, {evictions} evictions; expected "
                          "one of each")
        t_rr = time.time() - t_rr
        # The same context several times in a row: all but the first query are hits.
        before = server.metrics()
        client.generate(ids[0], prompt, dl.DENSE, MAX_TOKENS)
        t0 = time.time()
        for _ in range(HIT_QUERIES):
            client.generate(ids[0], prompt, dl.DENSE, MAX_TOKENS)
        t_hit = (time.time() - t0) / HIT_QUERIES
        after = server.metrics()
        check(after[HITS] - before[HITS] >= HIT_QUERIES and after[LOADS] - before[LOADS] <= 1,
              "queries in a row on one context: expected hits after the first")
        check(client.get(ids[0]).resident, f"{ids[0]} not resident after its queries")
        concurrent = concurrent_queries(client, ids, prompt, server)
        final = server.metrics()
        # Deleting a resident context frees its memory, and the gauges say so.
        resident = [cid for cid in ids if client.get(cid).resident]
        check(len(resident) == 2, f"GetContext says {resident} are resident")
        client.delete(resident[0])
        m = server.metrics()
        check(m[RESIDENT] == 1 and m[RESIDENT_BYTES] == size,
              f"after deleting a resident context: sqz_context_resident {m[RESIDENT]}, "
              f"sqz_context_resident_bytes {m[RESIDENT_BYTES]}; expected 1 and {size}")
        print(f"round robin: {queries} queries over 3 contexts in {t_rr:.2f} s, {misses} loads "
              f"from RocksDB; totals: {final[LOADS]:.0f} loads, {final[EVICTIONS]:.0f} "
              f"evictions, {final[HITS]:.0f} hits; miss {1e3 * t_miss / max(misses, 1):.1f} ms "
              f"per query, hit {1e3 * t_hit:.1f} ms; concurrent: "
              f"{concurrent}", flush=True)
        client.close()
        check(server.terminate() == 0, "the server did not stop cleanly")
    except Exception:
        print("---- squeezed log (tail) ----\n" + server.tail(60), file=sys.stderr)
        raise
    finally:
        server.kill()
        tmp.cleanup()
    print(f"residency test in {time.time() - t_start:.1f} s\nOK")


if __name__ == "__main__":
    main()
