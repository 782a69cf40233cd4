"""Crash test with the real squeezed process (issue 6, "Done when" 1).

Contexts are registered and deleted by concurrent clients while squeezed is killed with SIGKILL at
a seeded random moment; the process is restarted on the same data directory, 20 times. A clean
run first builds every context of the pool once and records its reference: content digest,
stored bytes, greedy tokens in DENSE and SQUEEZED mode, and the digest of its stored snapshot
(sqz-durability-dump). Then, after every kill and restart:

  * what the killed process left on disk (a copy, dumped): every READY snapshot loads and is
    byte-identical to the clean run's (snapshot digest, stored bytes); every acknowledged
    registration is stored; no acknowledged deletion is;
  * the restarted server lists exactly the contexts on disk; a context caught mid-ingestion
    refuses Generate with FAILED_PRECONDITION (never garbage) and then resumes and reaches READY;
    every context generates the clean run's greedy tokens, densely and squeezed;
  * a context whose CreateContext returned OK is never lost; one whose DeleteContext returned OK
    never comes back; an operation cut off by the kill may have happened or not, but either way
    the context is whole or absent.

Some iterations kill the server shortly after a restart, while it resumes interrupted ingestions.
One context of each client is pinned (loaded at every start). A reader issues long queries over
every context meanwhile, so that deletions wait for queries in flight when the kill comes.

Environment: see durability_lib.py; SQZ_CRASH_SEED and SQZ_CRASH_ITERATIONS override the defaults.
"""

import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import durability_lib as dl  # noqa: E402

grpc = dl.grpc
SEED = int(os.environ.get("SQZ_CRASH_SEED", "6"))
ITERATIONS = int(os.environ.get("SQZ_CRASH_ITERATIONS", "20"))
WORKERS = 3
IDS_PER_WORKER = 3
MAX_TOKENS = 6
LONG_TOKENS = 48  # the reader's queries, long enough to overlap deletions
# Context lengths beyond sink (4) + observation window (100), awkward ones included.
LENGTHS = (105, 127, 129, 160, 201, 255, 257, 300)


def make_pool(rng):
    pool = {}
    for w in range(WORKERS):
        for k in range(IDS_PER_WORKER):
            cid = f"crash-w{w}-{k}-{rng.getrandbits(20):05x}"
            pool[cid] = dl.random_tokens(rng, rng.choice(LENGTHS))
    return pool


def pinned(cid):
    """The first context of each worker is pinned: a restart loads it before serving."""
    return "-0-" in cid


class Failure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def clean_reference(pool, prompt):
    """Builds every context once on a fresh server: {id: reference}."""
    with tempfile.TemporaryDirectory(prefix="sqz-crash-clean-") as tmp:
        data = os.path.join(tmp, "data")
        server = dl.Server(dl.STORIES, data).start()
        client = dl.Client(server.address)
        try:
            for cid, tokens in pool.items():
                client.create(cid, tokens, pin=pinned(cid))
            ref = {}
            for cid in pool:
                c = client.wait_ready(cid)
                ref[cid] = {
                    "content_digest": c.content_digest,
                    "stored_bytes": c.stored_bytes,
                    "token_count": c.token_count,
                    dl.DENSE: client.generate(cid, prompt, dl.DENSE, MAX_TOKENS),
                    dl.SQUEEZED_MODE: client.generate(cid, prompt, dl.SQUEEZED_MODE, MAX_TOKENS),
                }
                check(c.token_count == len(pool[cid]), f"{cid}: token_count {c.token_count}")
        finally:
            client.close()
        check(server.terminate() == 0, "the clean server did not stop cleanly:\n" + server.tail())
        dump = dl.dump_store(data, copy=False)
    for cid in pool:
        rec = dump.get(cid)
        check(rec is not None and rec["state"] == "READY" and "snapshot_digest" in rec,
              f"clean run: {cid} not stored READY: {rec}")
        ref[cid]["snapshot_digest"] = rec["snapshot_digest"]
    digests = {r["snapshot_digest"] for r in ref.values()}
    check(len(digests) == len(pool), "clean run: two contexts share a snapshot digest")
    return ref


class Tracker:
    """What the client knows of each id: "absent" (never created, or DeleteContext returned OK),
    "present" (CreateContext returned OK, or seen after a restart), or "unknown" (an operation
    on it was cut off by the kill)."""

    def __init__(self, pool):
        self.state = {cid: "absent" for cid in pool}
        self.lock = threading.Lock()

    def set(self, cid, value):
        with self.lock:
            self.state[cid] = value

    def get(self, cid):
        with self.lock:
            return self.state[cid]


def check_generation(cid, tokens, err, ref, mode, killed, stats):
    """A Generate over a registered context: the clean run's tokens, or FAILED_PRECONDITION
    saying it is not ready; anything else (while the server is up) fails the test."""
    if err is None:
        check(tokens == ref[cid][mode],
              f"{cid}: Generate ({dl.opt_pb.AttentionOptions.Mode.Name(mode)}) gave {tokens}, "
              f"the clean run {ref[cid][mode]}")
        stats["generate_ok"] += 1
        return
    if killed.is_set():
        return
    check(err.code() == grpc.StatusCode.FAILED_PRECONDITION and "not ready" in err.details(),
          f"{cid}: Generate failed with {err.code()} '{err.details()}'; expected the clean "
          f"tokens or FAILED_PRECONDITION 'not ready'")
    stats["generate_refused_not_ready"] += 1


def worker(client, ids, pool, ref, prompt, tracker, rng, killed, stats, errors):
    try:
        while not killed.is_set():
            cid = rng.choice(ids)
            state = tracker.get(cid)
            if state == "absent":
                tracker.set(cid, "unknown")
                _, err = dl.rpc_code(client.create, cid, pool[cid], pinned(cid))
                if err is None:
                    tracker.set(cid, "present")
                    stats["creates_acked"] += 1
                else:
                    check(killed.is_set(), f"CreateContext {cid} failed while the server was up: "
                          f"{err.code()} {err.details()}")
            elif state == "present":
                if rng.random() < 0.4:
                    mode = rng.choice((dl.DENSE, dl.SQUEEZED_MODE))
                    tokens, err = dl.rpc_code(client.generate, cid, prompt, mode, MAX_TOKENS)
                    check_generation(cid, tokens, err, ref, mode, killed, stats)
                else:
                    tracker.set(cid, "unknown")
                    _, err = dl.rpc_code(client.delete, cid)
                    if err is None:
                        tracker.set(cid, "absent")
                        stats["deletes_acked"] += 1
                    else:
                        check(killed.is_set(), f"DeleteContext {cid} failed while the server was "
                              f"up: {err.code()} {err.details()}")
            time.sleep(rng.uniform(0.0, 0.12))
    except Exception as e:  # reported by the main thread
        errors.append(e)


def reader(client, ids, ref, prompt, rng, killed, stats, errors):
    """Long queries over any context, also ones other clients are deleting: a DeleteContext then
    waits for the query, and the kill may land during that wait. A query gives the clean run's
    tokens (as a prefix: greedy decoding is token by token), or NOT_FOUND, or FAILED_PRECONDITION
    saying it is not ready."""
    try:
        while not killed.is_set():
            cid = rng.choice(ids)
            tokens, err = dl.rpc_code(client.generate, cid, prompt, dl.SQUEEZED_MODE, LONG_TOKENS)
            if err is None:
                check(tokens[:MAX_TOKENS] == ref[cid][dl.SQUEEZED_MODE],
                      f"{cid}: a long query gave {tokens[:MAX_TOKENS]}..., the clean run "
                      f"{ref[cid][dl.SQUEEZED_MODE]}")
                stats["long_generate_ok"] += 1
            elif not killed.is_set():
                check(err.code() == grpc.StatusCode.NOT_FOUND or
                      (err.code() == grpc.StatusCode.FAILED_PRECONDITION and
                       "not ready" in err.details()),
                      f"{cid}: a long query failed with {err.code()} '{err.details()}'")
            time.sleep(rng.uniform(0.0, 0.05))
    except Exception as e:  # reported by the main thread
        errors.append(e)


def check_disk(dump, pool, ref, tracker, stats):
    """What a killed server left: READY snapshots identical to the clean run's; acknowledged
    registrations stored, acknowledged deletions gone."""
    for cid, rec in dump.items():
        check(cid in pool, f"unknown context {cid} on disk")
        check(rec["content_digest"] == ref[cid]["content_digest"],
              f"{cid}: stored content digest {rec['content_digest']} differs from the clean run")
        if rec["state"] == "READY":
            check("load_error" not in rec, f"{cid}: READY but its snapshot does not load: "
                  f"{rec.get('load_error')}")
            check(rec["snapshot_digest"] == ref[cid]["snapshot_digest"] and
                  rec["stored_bytes"] == ref[cid]["stored_bytes"],
                  f"{cid}: READY snapshot on disk differs from the clean run: {rec} vs "
                  f"{ref[cid]['snapshot_digest']}, {ref[cid]['stored_bytes']} bytes")
            stats["ready_on_disk_checked"] += 1
        else:
            check(rec["state"] != "FAILED", f"{cid}: FAILED on disk: {rec}")
            stats["unfinished_on_disk"] += 1
    for cid in pool:
        state = tracker.get(cid)
        if state == "present":
            check(cid in dump, f"{cid}: registration acknowledged, but not on disk")
        elif state == "absent":
            check(cid not in dump, f"{cid}: deletion acknowledged (or never created), but on "
                  f"disk: {dump.get(cid)}")


def verify_restarted(client, dump, pool, ref, prompt, tracker, stats):
    """The restarted server serves exactly what is on disk, every context reaches READY and
    generates the clean run's tokens; resolves unknown ids."""
    listed = client.list_all()
    check(set(listed) == set(dump), f"listed {sorted(listed)} but on disk {sorted(dump)}")
    never = threading.Event()
    for cid, c in listed.items():
        if c.state != dl.READY:
            stats["resumed"] += 1
            mode = dl.SQUEEZED_MODE
            tokens, err = dl.rpc_code(client.generate, cid, prompt, mode, MAX_TOKENS)
            check_generation(cid, tokens, err, ref, mode, never, stats)
    for cid in pool:
        if cid not in listed:
            c, err = dl.rpc_code(client.get, cid)
            check(err is not None and err.code() == grpc.StatusCode.NOT_FOUND,
                  f"{cid}: not listed, but GetContext answered {c or err}")
            _, err = dl.rpc_code(client.generate, cid, prompt, dl.DENSE, MAX_TOKENS)
            check(err is not None and err.code() == grpc.StatusCode.NOT_FOUND,
                  f"{cid}: not listed, but Generate did not answer NOT_FOUND: {err}")
            tracker.set(cid, "absent")
    for cid in listed:
        c = client.wait_ready(cid, timeout=120)
        for field in ("content_digest", "stored_bytes", "token_count"):
            check(getattr(c, field) == ref[cid][field],
                  f"{cid}: {field} {getattr(c, field)} vs the clean run's {ref[cid][field]}")
        for mode in (dl.DENSE, dl.SQUEEZED_MODE):
            tokens = client.generate(cid, prompt, mode, MAX_TOKENS)
            check(tokens == ref[cid][mode], f"{cid}: after restart Generate gave {tokens}, the "
                  f"clean run {ref[cid][mode]}")
        # A client retrying its registration after the crash gets the same context back.
        again = client.create(cid, pool[cid], pin=pinned(cid))
        check(again.state == dl.READY, f"{cid}: CreateContext again gave state {again.state}")
        tracker.set(cid, "present")


def main():
    rng = dl.seeded(SEED)
    pool = make_pool(rng)
    prompt = [1] + dl.random_tokens(rng, 5)
    t_start = time.time()
    ref = clean_reference(pool, prompt)
    t_clean = time.time() - t_start
    print(f"clean run: {len(pool)} contexts ({sorted(len(t) for t in pool.values())} tokens) in "
          f"{t_clean:.1f} s", flush=True)

    stats = {k: 0 for k in ("creates_acked", "deletes_acked", "generate_ok",
                            "generate_refused_not_ready", "ready_on_disk_checked",
                            "unfinished_on_disk", "resumed", "unknown_at_kill", "early_kills",
                            "long_generate_ok", "deletions_finished_at_start")}
    tracker = Tracker(pool)
    ids = list(pool)
    tmp = tempfile.TemporaryDirectory(prefix="sqz-crash-")
    data = os.path.join(tmp.name, "data")
    server = None
    on_disk = {}  # what the last kill left, dumped before the restart
    restart_s = []  # process start to "ready", per start
    try:
        for it in range(ITERATIONS + 1):
            t0 = time.time()
            server = dl.Server(dl.STORIES, data).start()
            restart_s.append(time.time() - t0)
            client = dl.Client(server.address)
            if it == ITERATIONS:
                # The last restart: everything reaches READY; then a clean stop.
                verify_restarted(client, on_disk, pool, ref, prompt, tracker, stats)
                client.close()
                check(server.terminate() == 0, "the last server did not stop cleanly")
                final = dl.dump_store(data, copy=False)
                check_disk(final, pool, ref, tracker, stats)
                check(all(r["state"] == "READY" for r in final.values()),
                      f"not all READY after a clean stop: {final}")
                print(f"final: {len(final)} contexts READY and identical to the clean run",
                      flush=True)
                break
            for line in server.log:
                if "finished the deletion of context" in line:
                    stats["deletions_finished_at_start"] += 1
            killed = threading.Event()
            early = rng.random() < 0.25
            if early:
                # Killed while the restart resumes whatever the last kill interrupted.
                stats["early_kills"] += 1
                time.sleep(rng.uniform(0.0, 0.3))
                kill_after = 0.0
            else:
                verify_restarted(client, on_disk, pool, ref, prompt, tracker, stats)
                kill_after = rng.uniform(0.05, 1.5)
            errors = []
            threads = [threading.Thread(
                target=worker,
                args=(client, ids[w * IDS_PER_WORKER:(w + 1) * IDS_PER_WORKER], pool, ref,
                      prompt, tracker, dl.seeded(SEED * 1000 + it * 10 + w), killed, stats,
                      errors)) for w in range(WORKERS)] if not early else []
            if not early:
                threads.append(threading.Thread(target=reader, args=(
                    client, ids, ref, prompt, dl.seeded(SEED * 1000 + it * 10 + 9), killed, stats,
                    errors)))
            for t in threads:
                t.start()
            time.sleep(kill_after)
            killed.set()
            server.kill()  # SIGKILL
            for t in threads:
                t.join(timeout=120)
            client.close()
            if errors:
                raise errors[0]
            unknown = [cid for cid in pool if tracker.get(cid) == "unknown"]
            stats["unknown_at_kill"] += len(unknown)
            dump = dl.dump_store(data)
            check_disk(dump, pool, ref, tracker, stats)
            on_disk = dump
            states = sorted(r["state"][:4] for r in dump.values())
            print(f"iteration {it + 1:2d}: {'early kill' if early else 'killed after'} "
                  f"{kill_after:.2f} s; on disk {states}; cut off: {len(unknown)}; "
                  f"{time.time() - t0:.1f} s", flush=True)
    except Exception:
        if server is not None:
            print("---- squeezed log (tail) ----\n" + server.tail(60), file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.kill()
        tmp.cleanup()
    total = time.time() - t_start
    print(f"crash test: {ITERATIONS} SIGKILLs, seed {SEED}, {total:.1f} s in all; start to ready "
          f"{min(restart_s):.2f} .. {max(restart_s):.2f} s (mean "
          f"{sum(restart_s) / len(restart_s):.2f}); {stats}")
    check(stats["creates_acked"] > 0 and stats["deletes_acked"] > 0,
          "the workload acknowledged no registration or no deletion")
    check(stats["ready_on_disk_checked"] > 0, "no READY snapshot was compared on disk")
    print("OK")


if __name__ == "__main__":
    main()
