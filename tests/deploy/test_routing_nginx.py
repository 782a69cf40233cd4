"""Context-affine routing through the shipped nginx config, with what the server serves today
(health and GetServerInfo; ContextService lands later, see test_routing.py): two real squeezed
replicas and Debian's nginx on loopback ports.

Checks that nginx accepts deploy/routing/nginx/nginx.conf (rewritten only for loopback ports and
scratch paths), that gRPC passes through it (grpc_pass over HTTP/2), that the x-squeeze-context
header hashes each context id consistently to exactly one replica (whatever the order of the
upstream lines, across router restarts), that requests without the header spread over the
replicas, and that a stopped replica makes its contexts answer UNAVAILABLE while the other
replica's contexts still answer, until it is back on the same port.

Usage: test_routing_nginx.py SQUEEZED_BINARY STUB_DIR
"""

import os
import random
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import routing_lib as rl  # noqa: E402

if len(sys.argv) != 3:
    sys.exit(__doc__)
SQUEEZED, STUBS = sys.argv[1], sys.argv[2]
if not (rl.shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
    rl.skip("nginx is not installed (scripts/install_deps.sh installs nginx-light)")
rl.lib.import_stubs(STUBS)
import grpc  # noqa: E402
from squeeze.v1 import generation_service_pb2 as gen_pb  # noqa: E402
from squeeze.v1 import generation_service_pb2_grpc as gen_grpc  # noqa: E402

# Seeded, so a failure names context ids that reproduce it.
CONTEXT_IDS = [f"ctx-{random.Random(1234 + i).getrandbits(40):010x}" for i in range(40)]


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class NginxRoutingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="squeeze-routing-")
        cls.replicas = [rl.Replica(SQUEEZED, name, os.path.join(cls.tmp.name, name))
                        for name in ("replica-a", "replica-b")]
        cls.routers = []
        try:
            for r in cls.replicas:
                r.start()
            cls.router = cls.start_router(cls.replicas)
        except Exception:
            cls.tearDownClass()
            raise
        cls.channel = grpc.insecure_channel(cls.router.address)
        cls.stub = gen_grpc.GenerationServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "channel", None):
            cls.channel.close()
        for router in cls.routers:
            router.stop()
        for r in cls.replicas:
            r.kill()

    @classmethod
    def start_router(cls, replicas):
        router = rl.NginxRouter(replicas)
        cls.routers.append(router)
        return router.start()

    def replica_of(self, upstream):
        for r in self.replicas:
            if upstream == r.address:
                return r.name
        self.fail(f"nginx used upstream {upstream!r}, which is no replica "
                  f"({[r.address for r in self.replicas]})")

    def route(self, context_id, router=None, stub=None):
        """Sends GetServerInfo for `context_id` through nginx; returns the replica that served it."""
        router = router or self.router
        (stub or self.stub).GetServerInfo(gen_pb.GetServerInfoRequest(), timeout=10,
                                          metadata=((rl.ROUTE_HEADER, context_id),))
        entry = router.next_entry_for(context_id)
        self.assertEqual(entry["status"], "200", entry)
        return self.replica_of(entry["upstream"])

    def mapping(self, router=None, stub=None):
        return {c: self.route(c, router, stub) for c in CONTEXT_IDS}

    def test_nginx_accepts_the_shipped_config(self):
        code, output = self.router.check_config()
        self.assertEqual(code, 0, output)
        self.assertIn("hash $squeeze_route_key consistent;", self.router.conf_text)
        self.assertIn("grpc_pass grpc://squeeze_replicas;", self.router.conf_text)

    def test_health_and_server_info_pass_through_grpc_pass(self):
        self.assertEqual(rl.health_check(self.channel), 1)
        via_router = self.stub.GetServerInfo(gen_pb.GetServerInfoRequest(), timeout=10)
        with grpc.insecure_channel(self.replicas[0].address) as direct_channel:
            direct = gen_grpc.GenerationServiceStub(direct_channel).GetServerInfo(
                gen_pb.GetServerInfoRequest(), timeout=10)
        self.assertEqual(via_router.version, direct.version)
        self.assertEqual(via_router.backend, direct.backend)
        self.assertEqual(via_router.limits, direct.limits)

    def test_each_context_always_reaches_the_same_single_replica(self):
        first = self.mapping()
        for _ in range(2):
            self.assertEqual(self.mapping(), first)
        counts = {r.name: list(first.values()).count(r.name) for r in self.replicas}
        # 40 ids over a ring of 2 x 160 points: both replicas get a real share.
        for name, n in counts.items():
            self.assertGreaterEqual(n, 5, f"{name} got {n} of 40 contexts: {counts}")

    def test_mapping_ignores_upstream_order_and_router_restarts(self):
        before = self.mapping()
        reordered = self.start_router(list(reversed(self.replicas)))
        with grpc.insecure_channel(reordered.address) as channel:
            after = self.mapping(reordered, gen_grpc.GenerationServiceStub(channel))
        reordered.stop()
        self.assertEqual(after, before)

    def test_requests_without_a_context_spread_over_replicas(self):
        served = set()
        for i in range(30):
            marker = f"no-context-{i}"
            # No routing header; the marker travels in another header only to find the log line.
            self.stub.GetServerInfo(gen_pb.GetServerInfoRequest(), timeout=10,
                                    metadata=(("x-test-marker", marker),))
        entries = [e for e in self.router.access_entries() if e["context"] == ""]
        served = {self.replica_of(e["upstream"]) for e in entries}
        self.assertEqual(served, {r.name for r in self.replicas},
                         "30 requests without x-squeeze-context all went to one replica")

    def test_large_request_passes_the_router(self):
        # A 3 MiB GetServerInfoRequest (an unknown field the server skips): nginx must stream
        # bodies this large (client_max_body_size) like the contexts CreateContext carries.
        size = 3 << 20
        payload = varint((1000 << 3) | 2) + varint(size) + b"x" * size
        call = self.channel.unary_unary("/squeeze.v1.GenerationService/GetServerInfo",
                                        response_deserializer=gen_pb.ServerInfo.FromString)
        info = call(payload, timeout=30, metadata=((rl.ROUTE_HEADER, CONTEXT_IDS[0]),))
        self.assertEqual(info.backend, "cpu")

    def test_zz_stopped_replica_answers_unavailable_until_restarted(self):
        mapping = self.mapping()
        victim = self.replicas[1]
        own = [c for c, r in mapping.items() if r == victim.name]
        others = [c for c, r in mapping.items() if r != victim.name]
        self.assertTrue(own and others, mapping)
        self.assertEqual(victim.stop(), 0, victim.output())
        try:
            for c in own:
                with self.assertRaises(grpc.RpcError, msg=c) as e:
                    self.stub.GetServerInfo(gen_pb.GetServerInfoRequest(), timeout=10,
                                            metadata=((rl.ROUTE_HEADER, c),))
                self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE, c)
                self.assertIn("replica for this context is unavailable", e.exception.details())
                entry = self.router.next_entry_for(c)
                self.assertEqual(entry["upstream"], victim.address, entry)
            for c in others:
                self.assertNotEqual(self.route(c), victim.name, c)
        finally:
            victim.start()
        self.assertTrue(rl.lib.wait_until(lambda: self._serves(own[0]), 20),
                        "the restarted replica is not reached again through nginx")
        self.assertEqual(self.mapping(), mapping)

    def _serves(self, context_id):
        try:
            self.route(context_id)
            return True
        except grpc.RpcError:
            self.router.next_entry_for(context_id)
            return False


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
