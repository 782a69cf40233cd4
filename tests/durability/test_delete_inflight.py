"""A deletion that waits for a query in flight holds up nothing else.

DeleteContext waits for the context's queries in flight before it removes anything. Meanwhile
(the query is a long greedy stream over a generated tiny model with 8192 positions):
  * the context is gone for everyone else: GetContext and Generate answer NOT_FOUND;
  * another context registered now is persisted and becomes READY, and another idle context is
    deleted at once: the registry's thread is not blocked by the waiting deletion (it was: every
    persistence and deletion queued behind it until the long query ended);
  * cancelling the query releases it: the deletion then completes, and after a SIGKILL and a
    restart the deleted contexts stay deleted while the new one is READY.

Environment: see durability_lib.py (SQZ_MAKE_TINY_MODEL).
"""

import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import durability_lib as dl  # noqa: E402

grpc = dl.grpc
LONG_TOKENS = 8000  # several seconds of decoding here; the checks below take well under one


class Failure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


class LongQuery:
    """A streaming greedy Generate read on its own thread."""

    def __init__(self, client, cid, prompt):
        req = dl.gen_pb.GenerateRequest(
            context="contexts/" + cid, token_ids=dl.ctx_pb.TokenIds(ids=prompt),
            sampling=dl.gen_pb.SamplingParams(max_tokens=LONG_TOKENS, temperature=0.0,
                                              ignore_eos=True))
        self.call = client.gen.Generate(req, timeout=120)
        self.first = threading.Event()
        self.ended = threading.Event()
        self.tokens = 0
        self.code = None
        self.end_time = None
        self.thread = threading.Thread(target=self.read)
        self.thread.start()

    def read(self):
        try:
            for r in self.call:
                if r.HasField("chunk"):
                    self.tokens += len(r.chunk.token_ids)
                    self.first.set()
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            self.code = e.code()
        finally:
            self.end_time = time.time()
            self.first.set()
            self.ended.set()


def main():
    t_start = time.time()
    rng = dl.seeded(5)
    tmp = tempfile.TemporaryDirectory(prefix="sqz-delete-inflight-")
    model = os.path.join(tmp.name, "tiny-long")
    r = subprocess.run([dl.env_path("SQZ_MAKE_TINY_MODEL"), "--out", model, "--vocab", "512",
                        "--layers", "2", "--max-positions", "8192", "--seed", "21"],
                       capture_output=True, text=True, timeout=120)
    check(r.returncode == 0, f"sqz-make-tiny-model failed: {r.stdout}{r.stderr}")
    data = os.path.join(tmp.name, "data")
    extra = ["--set", f"server.limits.max_new_tokens={LONG_TOKENS}"]
    server = dl.Server(model, data, extra=extra).start()
    client = dl.Client(server.address)
    query = None
    try:
        prompt = [1] + dl.random_tokens(rng, 3)
        for cid in ("busy", "idle"):
            client.create(cid, dl.random_tokens(rng, 120))
            client.wait_ready(cid)

        query = LongQuery(client, "busy", prompt)
        check(query.first.wait(60) and not query.ended.is_set(),
              f"the long query did not start streaming: {query.code}")
        deleted = {}

        def delete_busy():
            _, err = dl.rpc_code(client.delete, "busy")
            deleted["err"], deleted["t"] = err, time.time()

        deleter = threading.Thread(target=delete_busy)
        t_delete = time.time()
        deleter.start()
        time.sleep(0.2)
        check(not deleted, "DeleteContext returned while a query on the context was in flight")
        for name, fn in (("GetContext", lambda: client.get("busy")),
                         ("Generate", lambda: client.generate("busy", prompt, dl.DENSE, 4))):
            _, err = dl.rpc_code(fn)
            check(err is not None and err.code() == grpc.StatusCode.NOT_FOUND,
                  f"{name} on a context being deleted: {err.code() if err else 'OK'}")

        # The registry keeps working while that deletion waits.
        t0 = time.time()
        client.create("fresh", dl.random_tokens(rng, 110))
        client.wait_ready("fresh", timeout=60)
        t_fresh = time.time() - t0
        client.delete("idle")
        t_idle = time.time() - t0 - t_fresh
        if query.ended.is_set() or deleted:
            raise Failure(
                f"'fresh' became READY after {t_fresh:.2f} s and 'idle' was deleted after "
                f"{t_idle:.2f} s, but only once the long query on 'busy' had ended "
                f"({query.code}, {query.tokens} tokens, {query.end_time - t0:.2f} s after 'fresh' "
                "was created): the deletion waiting for that query held up the registry (or this "
                "machine is so slow that LONG_TOKENS must grow)")
        print(f"while 'busy' waits for its query ({query.tokens} tokens so far): 'fresh' READY "
              f"in {t_fresh:.2f} s, 'idle' deleted in {t_idle:.2f} s", flush=True)

        # Cancelling the query releases the deletion.
        t_cancel = time.time()
        query.call.cancel()
        deleter.join(timeout=30)
        check("err" in deleted and deleted["err"] is None,
              f"DeleteContext after the cancel: {deleted}")
        check(query.code == grpc.StatusCode.CANCELLED, f"the long query ended with {query.code}")
        print(f"'busy' deleted {deleted['t'] - t_cancel:.2f} s after its query was cancelled "
              f"({deleted['t'] - t_delete:.2f} s after DeleteContext)", flush=True)
        check(set(client.list_all()) == {"fresh"}, f"listed {sorted(client.list_all())}")

        server.kill()
        client.close()
        server = dl.Server(model, data, extra=extra).start()
        client = dl.Client(server.address)
        listed = client.list_all()
        check(set(listed) == {"fresh"} and listed["fresh"].state == dl.READY,
              f"after a SIGKILL and a restart: {listed}")
        client.close()
        check(server.terminate() == 0, "the server did not stop cleanly")
    except Exception:
        print("---- squeezed log (tail) ----\n" + server.tail(60), file=sys.stderr)
        raise
    finally:
        if query is not None:
            query.call.cancel()
            query.thread.join(timeout=30)
        server.kill()
        tmp.cleanup()
    print(f"delete-in-flight test in {time.time() - t_start:.1f} s\nOK")


if __name__ == "__main__":
    main()
