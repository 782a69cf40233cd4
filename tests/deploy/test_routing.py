"""Context-affine routing across replicas, end to end (issue 10, "Done when" 1): two real squeezed
replicas with a real model and Debian's nginx with the shipped config, all on loopback.

  1. ten contexts registered through nginx each land on exactly one replica (asked directly, one
     has it and the other answers NOT_FOUND; ListContexts of the two replicas are disjoint and
     cover all ten), the one nginx's access log says it sent the registration to;
  2. each is queried through nginx (WatchContext to READY, GetContext, Generate greedy);
  3. with one replica stopped, its contexts answer UNAVAILABLE through nginx while the other
     replica's contexts still generate;
  4. restarted on the same port and data directory, it serves its contexts again from RocksDB:
     READY through nginx, and greedy generation gives the same tokens as before the stop.

Not registered in CTest until ContextService and Generate are served; it exits 77 (skipped) with
a message when they answer UNIMPLEMENTED, when nginx is missing or when the model is absent.

Usage: test_routing.py SQUEEZED_BINARY STUB_DIR [MODEL_PATH]
  MODEL_PATH defaults to $SQZ_SHARED_DIR/models/stories260K (../shared next to the repository).
"""

import os
import random
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import routing_lib as rl  # noqa: E402

if len(sys.argv) not in (3, 4):
    sys.exit(__doc__)
SQUEEZED, STUBS = sys.argv[1], sys.argv[2]
SHARED = os.environ.get("SQZ_SHARED_DIR", os.path.join(rl.REPO, "..", "shared"))
MODEL = sys.argv[3] if len(sys.argv) == 4 else os.path.join(SHARED, "models", "stories260K")
if not os.path.exists(MODEL):
    rl.skip(f"model {MODEL} is absent")
if not (rl.shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
    rl.skip("nginx is not installed (scripts/install_deps.sh installs nginx-light)")
rl.lib.import_stubs(STUBS)
import grpc  # noqa: E402
from squeeze.v1 import context_service_pb2 as ctx_pb  # noqa: E402
from squeeze.v1 import context_service_pb2_grpc as ctx_grpc  # noqa: E402
from squeeze.v1 import generation_service_pb2 as gen_pb  # noqa: E402
from squeeze.v1 import generation_service_pb2_grpc as gen_grpc  # noqa: E402

RPC_TIMEOUT = 30
READY_TIMEOUT = 240  # ingestion of ten small contexts on two CPU replicas
WORDS = ("once upon a time there was a little girl named lily she liked to play in the park "
         "with her dog max one day they found a big red ball under a tree and the sun was "
         "warm the birds sang and her mom called her home for dinner").split()


def context_text(seed, words=200):
    """A seeded, story-like text the tiny model's tokenizer handles: long enough to have a body
    to cluster beyond the sink and the observation window."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


CONTEXT_IDS = [f"doc-{i:02d}-{random.Random(i).getrandbits(24):06x}" for i in range(10)]


def routed(context_id):
    return ((rl.ROUTE_HEADER, context_id),)


class RoutingEndToEndTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="squeeze-routing-e2e-")
        cls.replicas = [rl.Replica(SQUEEZED, name, os.path.join(cls.tmp.name, name),
                                   ["--model", MODEL])
                        for name in ("replica-a", "replica-b")]
        cls.router = None
        cls.channels = []
        try:
            for r in cls.replicas:
                r.start(timeout=120)
                cls.wait_serving(r)
            cls.router = rl.NginxRouter(cls.replicas).start()
        except Exception:
            cls.tearDownClass()
            raise
        cls.channel = cls.open_channel(cls.router.address)
        cls.contexts = ctx_grpc.ContextServiceStub(cls.channel)
        cls.generation = gen_grpc.GenerationServiceStub(cls.channel)
        try:
            cls.contexts.GetContext(ctx_pb.GetContextRequest(name="contexts/probe"),
                                    timeout=RPC_TIMEOUT, metadata=routed("probe"))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                cls.tearDownClass()
                rl.skip(f"ContextService is not served yet: {e.details()}")

    @classmethod
    def tearDownClass(cls):
        for channel in getattr(cls, "channels", []):
            channel.close()
        if getattr(cls, "router", None):
            cls.router.stop()
        for r in cls.replicas:
            r.kill()

    @classmethod
    def open_channel(cls, address):
        channel = grpc.insecure_channel(address)
        cls.channels.append(channel)
        return channel

    @classmethod
    def wait_serving(cls, replica, timeout=120):
        channel = grpc.insecure_channel(replica.address)

        def serving():
            try:
                return rl.health_check(channel, timeout=5) == 1
            except grpc.RpcError:
                return False

        try:
            if not rl.lib.wait_until(serving, timeout, 0.2):
                raise RuntimeError(f"{replica.name} never reported SERVING:\n{replica.output()}")
        finally:
            channel.close()

    def direct(self, replica):
        return ctx_grpc.ContextServiceStub(self.open_channel(replica.address))

    def holder_of(self, context_id):
        """The replica that has the context, asked directly; fails unless exactly one has it."""
        holders = []
        for r in self.replicas:
            try:
                self.direct(r).GetContext(ctx_pb.GetContextRequest(name=f"contexts/{context_id}"),
                                          timeout=RPC_TIMEOUT)
                holders.append(r.name)
            except grpc.RpcError as e:
                self.assertEqual(e.code(), grpc.StatusCode.NOT_FOUND, f"{r.name}: {e.details()}")
        self.assertEqual(len(holders), 1, f"{context_id} is held by {holders}")
        return holders[0]

    def wait_ready(self, context_id):
        """WatchContext through nginx (a server stream through grpc_pass) until READY."""
        deadline = time.time() + READY_TIMEOUT
        last = None
        for update in self.contexts.WatchContext(
                ctx_pb.WatchContextRequest(name=f"contexts/{context_id}"),
                timeout=READY_TIMEOUT, metadata=routed(context_id)):
            last = update
            self.assertNotEqual(update.state, ctx_pb.FAILED, f"{context_id}: {update.error}")
            if update.state == ctx_pb.READY:
                return update
            self.assertLess(time.time(), deadline)
        self.fail(f"WatchContext of {context_id} ended before READY (last: {last})")

    def generate(self, context_id):
        """Greedy generation over the context through nginx; returns (token ids, final)."""
        request = gen_pb.GenerateRequest(
            context=f"contexts/{context_id}", text=b" The dog",
            sampling=gen_pb.SamplingParams(max_tokens=6, temperature=0.0, seed=7))
        tokens, final = [], None
        for response in self.generation.Generate(request, timeout=RPC_TIMEOUT,
                                                 metadata=routed(context_id)):
            if response.HasField("chunk"):
                tokens.extend(response.chunk.token_ids)
            else:
                final = response.final
        self.assertIsNotNone(final, f"{context_id}: the stream had no final message")
        self.assertGreater(final.usage.context_tokens, 0)
        self.assertEqual(final.usage.completion_tokens, len(tokens))
        return tokens, final

    def test_contexts_shard_route_fail_over_to_unavailable_and_recover(self):
        # 1. Register through nginx; each registration goes to the replica the hash picks.
        sent_to = {}
        for i, context_id in enumerate(CONTEXT_IDS):
            created = self.contexts.CreateContext(
                ctx_pb.CreateContextRequest(context_id=context_id, text=context_text(i).encode()),
                timeout=RPC_TIMEOUT, metadata=routed(context_id))
            self.assertEqual(created.name, f"contexts/{context_id}")
            entry = self.router.next_entry_for(context_id)
            sent_to[context_id] = next(r.name for r in self.replicas
                                       if r.address == entry["upstream"])
        for context_id in CONTEXT_IDS:
            ready = self.wait_ready(context_id)
            self.assertGreater(ready.token_count, 0)

        # Each context is on exactly one replica: the one nginx chose.
        holders = {c: self.holder_of(c) for c in CONTEXT_IDS}
        self.assertEqual(holders, sent_to)
        listed = {}
        for r in self.replicas:
            page = self.direct(r).ListContexts(ctx_pb.ListContextsRequest(page_size=100),
                                               timeout=RPC_TIMEOUT)
            listed[r.name] = {c.name.split("/", 1)[1] for c in page.contexts}
        self.assertFalse(listed["replica-a"] & listed["replica-b"], listed)
        self.assertEqual(listed["replica-a"] | listed["replica-b"], set(CONTEXT_IDS))
        self.assertTrue(listed["replica-a"] and listed["replica-b"],
                        f"all ten contexts on one replica: {listed}")

        # 2. Queried through nginx.
        before = {}
        for context_id in CONTEXT_IDS:
            got = self.contexts.GetContext(
                ctx_pb.GetContextRequest(name=f"contexts/{context_id}"), timeout=RPC_TIMEOUT,
                metadata=routed(context_id))
            self.assertEqual(got.state, ctx_pb.READY)
            before[context_id], _ = self.generate(context_id)
            self.assertTrue(before[context_id], context_id)

        # 3. One replica stopped: its contexts are UNAVAILABLE, the others still answer.
        victim = self.replicas[1]
        own = [c for c in CONTEXT_IDS if holders[c] == victim.name]
        others = [c for c in CONTEXT_IDS if holders[c] != victim.name]
        self.assertEqual(victim.stop(), 0, victim.output())
        try:
            for context_id in own:
                for call in (
                        lambda: self.contexts.GetContext(
                            ctx_pb.GetContextRequest(name=f"contexts/{context_id}"),
                            timeout=RPC_TIMEOUT, metadata=routed(context_id)),
                        lambda: self.generate(context_id)):
                    with self.assertRaises(grpc.RpcError, msg=context_id) as e:
                        call()
                    self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE,
                                     f"{context_id}: {e.exception.details()}")
            for context_id in others:
                self.assertEqual(self.generate(context_id)[0], before[context_id], context_id)
        finally:
            # 4. Restarted on the same port and data directory.
            victim.start(timeout=120)
        self.wait_serving(victim)
        for context_id in own:
            got = self.contexts.GetContext(
                ctx_pb.GetContextRequest(name=f"contexts/{context_id}"), timeout=RPC_TIMEOUT,
                metadata=routed(context_id))
            self.assertEqual(got.state, ctx_pb.READY, context_id)
            self.assertEqual(self.generate(context_id)[0], before[context_id],
                             f"{context_id}: greedy output changed after the restart")
        self.assertEqual({c: self.holder_of(c) for c in CONTEXT_IDS}, holders)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
