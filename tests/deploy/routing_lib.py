"""Helpers for the deployment tests: squeezed replicas on fixed loopback ports with their own data
directories (so a replica can be stopped and started again on the same port and RocksDB), Debian's
nginx running the shipped deploy/routing/nginx/nginx.conf rewritten only for loopback ports and
scratch paths, and a raw grpc.health.v1 check.

Everything listens on 127.0.0.1 only, and every wait is bounded.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
import squeeze_testlib as lib  # noqa: E402

NGINX_CONF = os.path.join(REPO, "deploy", "routing", "nginx", "nginx.conf")
ROUTE_HEADER = "x-squeeze-context"
SKIP = 77  # CTest SKIP_RETURN_CODE of the deploy tests


def skip(why):
    """Ends the test run as skipped (CTest SKIP_RETURN_CODE), saying why."""
    print(f"WARNING: skipped: {why}", flush=True)
    sys.exit(SKIP)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_check(channel, service="", timeout=10):
    """grpc.health.v1.Health/Check without generated stubs: the request is field 1 (string), the
    response field 1 (enum ServingStatus; 1 = SERVING). Raises grpc.RpcError on failure."""
    encoded = service.encode()
    request = (b"\x0a" + bytes([len(encoded)]) + encoded) if encoded else b""
    call = channel.unary_unary("/grpc.health.v1.Health/Check")
    reply = call(request, timeout=timeout)
    return reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0


class Replica:
    """One squeezed on a fixed port of 127.0.0.1 with a data directory that outlives its process:
    stop() then start() is a restart on the same address and the same RocksDB."""

    def __init__(self, binary, name, data_dir, extra_args=()):
        self.binary = binary
        self.name = name
        self.port = free_port()
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        if "--model" not in self.extra_args:
            # The small real test model keeps replicas quick to start (the default model is 135M).
            stories = os.path.join(os.environ.get("SQZ_SHARED_DIR", os.path.join(
                os.path.dirname(__file__), "..", "..", "..", "shared")), "models", "stories260K")
            if not os.path.isdir(stories):
                skip(f"{stories} not found (the shared test models)")
            self.extra_args += ["--model", stories]
        self.proc = None
        self.log = []

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self, timeout=60):
        cmd = [self.binary, "--listen", self.address, "--set", "server.metrics_address=",
               "--set", "server.drain_timeout_s=2", "--data-dir", self.data_dir] + self.extra_args
        self.log = []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        ready = threading.Event()

        def pump(proc):
            for line in proc.stdout:
                self.log.append(line)
                if "; ready" in line:  # listening, model loaded, contexts recovered
                    ready.set()
            ready.set()

        self._pump = threading.Thread(target=pump, args=(self.proc,), daemon=True)
        self._pump.start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError(f"replica {self.name} did not start:\n" + "".join(self.log))
        return self

    def stop(self, timeout=30):
        """SIGTERM (drain), wait; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close_output()
        return code

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc:
            self._close_output()

    def _close_output(self):
        self._pump.join(10)  # reads to the end of the exited process's output
        if not self.proc.stdout.closed:
            self.proc.stdout.close()

    def output(self):
        return "".join(self.log)


def render_nginx_conf(template, listen_port, replicas, work_dir):
    """The shipped nginx.conf with only what a loopback test must change: the listen address, the
    upstream servers, and the pid/log/temp paths. Raises ValueError when the shipped file no longer
    has a line this rewrite expects (so the test can never run a config other than the shipped
    one without saying so)."""
    text = template

    def sub(pattern, replacement, count=1):
        nonlocal text
        text, n = re.subn(pattern, replacement, text, flags=re.M)
        if n != count:
            raise ValueError(f"deploy/routing/nginx/nginx.conf: expected {count} line(s) matching "
                             f"{pattern!r}, found {n}")

    sub(r"^worker_processes .*;$", "worker_processes 1;")
    sub(r"^pid .*;$", f"pid {work_dir}/nginx.pid;")
    sub(r"^error_log .*;$", f"error_log {work_dir}/error.log info;")
    sub(r"^(\s*)access_log \S+ squeeze_route;$", rf"\1access_log {work_dir}/access.log squeeze_route;")
    sub(r"^(\s*)listen 50051 http2;$", rf"\1listen 127.0.0.1:{listen_port} http2;")
    servers = re.findall(r"^\s*server \S+:50051 max_fails=0;$", text, flags=re.M)
    if not servers:
        raise ValueError("deploy/routing/nginx/nginx.conf: no 'server HOST:50051 max_fails=0;' "
                         "line in upstream squeeze_replicas")
    block = "".join(f"    server {r.address} max_fails=0;\n" for r in replicas)
    text = re.sub(r"(^\s*server \S+:50051 max_fails=0;\n)+", block, text, count=1, flags=re.M)
    # Scratch directories for request bodies (nginx's defaults are under /var/lib/nginx).
    temp = "".join(f"  {kind}_temp_path {work_dir}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    sub(r"^http \{\n", "http {\n" + temp)
    return text


class NginxRouter:
    """Debian's nginx with the shipped config (rendered for loopback), in the foreground."""

    def __init__(self, replicas, listen_port=None):
        self.nginx = shutil.which("nginx") or ("/usr/sbin/nginx"
                                                if os.path.exists("/usr/sbin/nginx") else None)
        self.replicas = list(replicas)
        self.port = listen_port or free_port()
        self.tmp = tempfile.TemporaryDirectory(prefix="squeeze-nginx-")
        self.work = self.tmp.name
        # Workers run as an unprivileged user when nginx starts as root: let them write scratch.
        os.chmod(self.work, 0o755)
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(self.work, kind), mode=0o777)
            os.chmod(os.path.join(self.work, kind), 0o777)
        with open(NGINX_CONF) as f:
            self.conf_text = render_nginx_conf(f.read(), self.port, self.replicas, self.work)
        self.conf = os.path.join(self.work, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(self.conf_text)
        self.proc = None
        self._log_offset = 0

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def check_config(self):
        """nginx -t on the rendered config: (exit code, output)."""
        r = subprocess.run([self.nginx, "-t", "-e", os.path.join(self.work, "error.log"),
                            "-c", self.conf], capture_output=True, text=True, timeout=30)
        return r.returncode, r.stdout + r.stderr

    def start(self, timeout=20):
        self.proc = subprocess.Popen(
            [self.nginx, "-e", os.path.join(self.work, "error.log"), "-c", self.conf,
             "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

        def accepting():
            if self.proc.poll() is not None:
                return True
            with socket.socket() as s:
                s.settimeout(0.2)
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        if not lib.wait_until(accepting, timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("nginx did not start:\n" + self.error_log())
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def error_log(self):
        path = os.path.join(self.work, "error.log")
        if not os.path.exists(path):
            return ""
        with open(path) as f:
            return f.read()

    def access_entries(self):
        """Parsed access log lines: dicts with context, upstream, status, grpc_status."""
        path = os.path.join(self.work, "access.log")
        if not os.path.exists(path):
            return []
        entries = []
        with open(path) as f:
            for line in f:
                m = re.search(r'" (\d+) context="([^"]*)" upstream=(\S+) grpc_status=(\S+)', line)
                if m:
                    # nginx logs an empty value as "-" (no context id can be "-").
                    context = "" if m.group(2) == "-" else m.group(2)
                    entries.append({"status": m.group(1), "context": context,
                                    "upstream": m.group(3), "grpc_status": m.group(4)})
        return entries

    def next_entry_for(self, context, timeout=5):
        """The first access-log entry for `context` after the previous call's, waiting for nginx
        to write it (it logs when the request ends, just after the client has its answer)."""
        found = []

        def look():
            entries = self.access_entries()
            for i in range(self._log_offset, len(entries)):
                if entries[i]["context"] == context:
                    found.append(entries[i])
                    self._log_offset = i + 1
                    return True
            return False

        if not lib.wait_until(look, timeout, 0.02):
            raise AssertionError(f"no nginx access-log entry for context '{context}'")
        return found[0]
