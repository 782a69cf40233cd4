"""squeeze-health-probe, the images' HEALTHCHECK command, against a real squeezed on loopback:
exit 0 and "SERVING" while it serves, 1 with the gRPC error when the service name is unknown or
nothing listens, 1 once the server is gone, 2 with a usage message on bad arguments.

Usage: test_health_probe.py PROBE_BINARY SQUEEZED_BINARY
"""

import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import routing_lib as rl  # noqa: E402

if len(sys.argv) != 3:
    sys.exit(__doc__)
PROBE, SQUEEZED = sys.argv[1], sys.argv[2]


def probe(*args, timeout=30):
    return subprocess.run([PROBE, *args], capture_output=True, text=True, timeout=timeout)


class HealthProbeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="squeeze-probe-")
        cls.server = rl.Replica(SQUEEZED, "probe", os.path.join(cls.tmp.name, "data")).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.kill()

    def test_serving_server_exits_0(self):
        r = probe("--addr", self.server.address)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout.strip(), f"{self.server.address}: SERVING")

    def test_unknown_service_exits_1_with_not_found(self):
        r = probe("--addr", self.server.address, "--service", "no.such.Service")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("service 'no.such.Service': health check failed: NOT_FOUND", r.stdout)

    def test_nothing_listening_exits_1_with_unavailable_within_the_timeout(self):
        port = rl.free_port()  # closed again: nothing listens there
        start = time.monotonic()
        r = probe("--addr", f"127.0.0.1:{port}", "--timeout", "3")
        self.assertLess(time.monotonic() - start, 10)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"health check failed: (UNAVAILABLE|DEADLINE_EXCEEDED)")

    def test_bad_arguments_exit_2_with_usage(self):
        for args, message in [(["--timeout", "x"], "--timeout must be a number of seconds"),
                              (["--timeout", "0"], "--timeout must be a number of seconds"),
                              (["--timeout", "-1"], "--timeout must be a number of seconds"),
                              (["--timeout", "4000"], "--timeout must be a number of seconds"),
                              (["--addr"], "--addr needs a value"),
                              (["--addr", ""], "--addr must not be empty"),
                              (["--port", "1"], "unknown argument '--port'")]:
            r = probe(*args)
            self.assertEqual(r.returncode, 2, args)
            self.assertIn(message, r.stderr, args)
            self.assertIn("usage:", r.stderr, args)

    def test_help_exits_2_with_usage_only(self):
        r = probe("--help")
        self.assertEqual(r.returncode, 2)
        self.assertTrue(r.stderr.startswith("usage:"), r.stderr)

    def test_zz_stopped_server_exits_1(self):
        self.assertEqual(self.server.stop(), 0, self.server.output())
        r = probe("--addr", self.server.address, "--timeout", "3")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("health check failed", r.stdout)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
