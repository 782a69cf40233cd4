"""Helpers for end-to-end tests: start the real squeezed on a free loopback port, stop it, and
connect Python clients with the generated squeeze.v1 stubs."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest


class Squeezed:
    """A squeezed process on 127.0.0.1 with a port the kernel chose (listen_address ...:0)."""

    def __init__(self, binary, args=(), config_text=None, env=None):
        self.binary = binary
        self.tmp = tempfile.TemporaryDirectory(prefix="squeezed-test-")
        self.args = list(args)
        if config_text is not None:
            path = os.path.join(self.tmp.name, "squeezed.yaml")
            with open(path, "w") as f:
                f.write(config_text)
            self.args = ["--config", path] + self.args
        self.env = env
        self.proc = None
        self.port = None
        self.log = []

    def start(self, timeout=120, wait_ready=True):
        cmd = [self.binary, "--listen", "127.0.0.1:0", "--set", "server.metrics_address="]
        if "--data-dir" not in self.args:
            cmd += ["--data-dir", os.path.join(self.tmp.name, "data")]
        cmd += self.args
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=self.env)
        found = threading.Event()
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.log.append(line)
                m = re.search(r"listening on [^\s:]+:(\d+)", line)
                if m and not found.is_set():
                    self.port = int(m.group(1))
                    found.set()
                if "; ready" in line:
                    ready.set()
            found.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(timeout) or self.port is None:
            self.kill()
            raise RuntimeError("squeezed did not start:\n" + "".join(self.log))
        if wait_ready and (not ready.wait(timeout) or self.proc.poll() is not None):
            self.kill()
            raise RuntimeError("squeezed did not become ready:\n" + "".join(self.log))
        return self

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def terminate(self, timeout=60):
        """SIGTERM, then wait; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self):
        return "".join(self.log)


SHARED = os.environ.get("SQZ_SHARED_DIR",
                        os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared"))
STORIES = os.path.join(SHARED, "models", "stories260K")


def model_args():
    """squeezed arguments for the small real test model (stories260K, from the shared folder)."""
    if not os.path.isdir(STORIES):
        raise unittest.SkipTest(f"skipped: {STORIES} not found (the shared test models)")
    return ["--model", STORIES]


def import_stubs(stub_dir):
    """Makes `from squeeze.v1 import ..._pb2` importable from the build's generated stubs."""
    if stub_dir not in sys.path:
        sys.path.insert(0, stub_dir)


def wait_until(predicate, timeout=30.0, interval=0.05):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False
