"""End to end: the real squeezed process on loopback answers Health, GetServerInfo and
UNIMPLEMENTED-with-a-reason, and exits cleanly on SIGTERM. Runs with Debian's /usr/bin/python3
(python3-grpcio) and the stubs generated at build time.

Usage: test_foundation.py SQUEEZED_BINARY STUB_DIR SQUEEZECTL_BINARY
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import squeeze_testlib as lib  # noqa: E402

SQUEEZED, STUBS, SQUEEZECTL = sys.argv[1], sys.argv[2], sys.argv[3]
lib.import_stubs(STUBS)
import grpc  # noqa: E402
from squeeze.v1 import context_service_pb2 as ctx_pb  # noqa: E402
from squeeze.v1 import context_service_pb2_grpc as ctx_grpc  # noqa: E402
from squeeze.v1 import generation_service_pb2 as gen_pb  # noqa: E402
from squeeze.v1 import generation_service_pb2_grpc as gen_grpc  # noqa: E402


def health_check(channel, service=""):
    """grpc.health.v1.Health/Check without generated stubs: the request is field 1 (string), the
    response field 1 (enum ServingStatus; 1 = SERVING)."""
    encoded = service.encode()
    request = (b"\x0a" + bytes([len(encoded)]) + encoded) if encoded else b""
    call = channel.unary_unary("/grpc.health.v1.Health/Check")
    reply = call(request, timeout=10)
    return reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0


class FoundationTest(unittest.TestCase):
    def setUp(self):
        self.server = lib.Squeezed(SQUEEZED, args=lib.model_args()).start()
        self.channel = grpc.insecure_channel(self.server.address)

    def tearDown(self):
        self.channel.close()
        self.server.kill()

    def test_health_serving(self):
        self.assertEqual(health_check(self.channel), 1)

    def test_server_info(self):
        info = gen_grpc.GenerationServiceStub(self.channel).GetServerInfo(
            gen_pb.GetServerInfoRequest(), timeout=10)
        self.assertEqual(info.version, "0.1.0")
        self.assertEqual(info.backend, "cpu")
        self.assertIn("health", info.features)
        self.assertTrue(info.devices[0].startswith("cpu: "))
        self.assertEqual(info.limits.max_new_tokens, 4096)
        self.assertTrue(info.ready)
        self.assertEqual(info.model.name, "stories260K")
        self.assertEqual(info.model.layers, 5)

    def test_unknown_context_is_not_found(self):
        stub = ctx_grpc.ContextServiceStub(self.channel)
        with self.assertRaises(grpc.RpcError) as e:
            stub.GetContext(ctx_pb.GetContextRequest(name="contexts/x"), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertIn("context x not found", e.exception.details())

    def test_squeezectl_info(self):
        import subprocess
        r = subprocess.run([SQUEEZECTL, "--server", self.server.address, "info"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("squeezed 0.1.0, backend cpu", r.stdout)

    def test_sigterm_exits_cleanly(self):
        self.assertEqual(self.server.terminate(), 0)
        self.assertIn("stopped cleanly", self.server.output())


class CommandLineTest(unittest.TestCase):
    def run_squeezed(self, *args):
        import subprocess
        return subprocess.run([SQUEEZED, *args], capture_output=True, text=True, timeout=30)

    def test_version_and_help(self):
        self.assertEqual(self.run_squeezed("--version").stdout.strip(), "squeezed 0.1.0")
        self.assertIn("--check-config", self.run_squeezed("--help").stdout)

    def test_check_config_reports_errors(self):
        import tempfile
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write("server: {listen_addres: x}\nengine: {model: {backend: gpu}}\n")
            f.flush()
            r = self.run_squeezed("--check-config", f.name)
        self.assertEqual(r.returncode, 1)
        self.assertIn("server.listen_addres: unknown key", r.stderr)
        self.assertIn("engine.model.backend: must be one of [cpu, cuda], got 'gpu'", r.stderr)

    def test_check_config_prints_effective_config(self):
        default = os.path.join(os.path.dirname(__file__), "..", "..", "config", "squeezed.yaml")
        r = self.run_squeezed("--check-config", default, "--set", "engine.squeeze.hierarchical=true")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("hierarchical: true", r.stdout)

    def test_busy_port_is_a_clear_error(self):
        server = lib.Squeezed(SQUEEZED, args=lib.model_args()).start()
        try:
            r = self.run_squeezed("--listen", server.address, "--set", "server.metrics_address=")
            self.assertEqual(r.returncode, 1)
            self.assertIn("cannot listen on " + server.address, r.stderr)
        finally:
            server.kill()


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
