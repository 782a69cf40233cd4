"""Shared helpers of the durability tests: the real squeezed on a given data directory, a small
grpcio client of ContextService / GenerationService, greedy generation, the Prometheus metrics,
and sqz-durability-dump over a copy of a data directory.

The tests take their binaries from the environment (CTest sets them, tests/durability/
CMakeLists.txt): SQZ_SQUEEZED, SQZ_STUBS (generated Python stubs), SQZ_DUMP (sqz-durability-dump),
SQZ_MAKE_TINY_MODEL, SQZ_SHARED_DIR. A missing shared model exits 77 (CTest: skipped).
"""

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import squeeze_testlib as lib  # noqa: E402

SKIP = 77


def skip(why):
    print(f"skipped: {why}")
    sys.exit(SKIP)


def env_path(name):
    value = os.environ.get(name, "")
    if not value or not os.path.exists(value):
        sys.exit(f"{name} must name an existing path (CTest sets it); got '{value}'")
    return value


SQUEEZED = env_path("SQZ_SQUEEZED")
STUBS = env_path("SQZ_STUBS")
DUMP = env_path("SQZ_DUMP")
SHARED = os.environ.get("SQZ_SHARED_DIR", lib.SHARED)
STORIES = os.path.join(SHARED, "models", "stories260K")
if not os.path.isdir(STORIES):
    skip(f"{STORIES} not found (the shared test models)")

lib.import_stubs(STUBS)
import grpc  # noqa: E402
from squeeze.v1 import context_service_pb2 as ctx_pb  # noqa: E402
from squeeze.v1 import context_service_pb2_grpc as ctx_grpc  # noqa: E402
from squeeze.v1 import generation_service_pb2 as gen_pb  # noqa: E402
from squeeze.v1 import generation_service_pb2_grpc as gen_grpc  # noqa: E402
from squeeze.v1 import squeeze_options_pb2 as opt_pb  # noqa: E402

READY = ctx_pb.READY
FAILED = ctx_pb.FAILED
DENSE = opt_pb.AttentionOptions.DENSE
SQUEEZED_MODE = opt_pb.AttentionOptions.SQUEEZED
STATE_NAMES = {v: k for k, v in ctx_pb.ContextState.items()}
RPC_TIMEOUT = 60

# One engine thread: the build machines are small and shared; the same setting in every run keeps
# the clean run and the crashed runs comparable.
BASE_ARGS = ["--set", "engine.model.threads=1", "--log-level", "info"]


class Server(lib.Squeezed):
    """squeezed on `data_dir` with `model`; metrics on a kernel-chosen port when asked."""

    def __init__(self, model, data_dir, extra=(), metrics=False):
        args = ["--model", model, "--data-dir", data_dir] + BASE_ARGS + list(extra)
        if metrics:
            args += ["--set", "server.metrics_address=127.0.0.1:0"]
        super().__init__(SQUEEZED, args=args)
        self.metrics_port = None
        self.started_at = None  # wall-clock time of start(), to date what the server writes

    def start(self, *args, **kwargs):
        self.started_at = time.time()
        return super().start(*args, **kwargs)

    def metrics_url(self):
        """The /metrics URL, from the log line squeezed prints just after it is ready."""
        if self.metrics_port is None:
            def find():
                for line in list(self.log):
                    m = re.search(r"metrics on http://[^\s:]+:(\d+)/metrics", line)
                    if m:
                        self.metrics_port = int(m.group(1))
                        return True
                return False
            assert lib.wait_until(find, timeout=30), "no metrics endpoint in the log"
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self):
        """The Prometheus text page as {"name{labels}": value}."""
        with urllib.request.urlopen(self.metrics_url(), timeout=10) as r:
            text = r.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def tail(self, lines=40):
        return "".join(self.log[-lines:])


class Client:
    def __init__(self, address):
        self.channel = grpc.insecure_channel(address)
        self.ctx = ctx_grpc.ContextServiceStub(self.channel)
        self.gen = gen_grpc.GenerationServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def create(self, cid, tokens, pin=False, timeout=RPC_TIMEOUT):
        return self.ctx.CreateContext(ctx_pb.CreateContextRequest(
            context_id=cid, token_ids=ctx_pb.TokenIds(ids=tokens), pin=pin), timeout=timeout)

    def get(self, cid, timeout=RPC_TIMEOUT):
        return self.ctx.GetContext(ctx_pb.GetContextRequest(name="contexts/" + cid),
                                   timeout=timeout)

    def get_or_none(self, cid):
        try:
            return self.get(cid)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def delete(self, cid, timeout=RPC_TIMEOUT):
        self.ctx.DeleteContext(ctx_pb.DeleteContextRequest(name="contexts/" + cid),
                               timeout=timeout)

    def list_all(self):
        """Every listed context, {id: Context}, over all pages (small pages on purpose)."""
        out, token = {}, ""
        while True:
            page = self.ctx.ListContexts(ctx_pb.ListContextsRequest(page_size=3, page_token=token),
                                         timeout=RPC_TIMEOUT)
            for c in page.contexts:
                out[c.name.split("/", 1)[1]] = c
            token = page.next_page_token
            if not token:
                return out

    def generate(self, cid, prompt, mode, max_tokens=8, timeout=RPC_TIMEOUT):
        """Greedy generation of exactly max_tokens tokens (EOS ignored): the token ids."""
        req = gen_pb.GenerateRequest(
            context="contexts/" + cid if cid else "", token_ids=ctx_pb.TokenIds(ids=prompt),
            sampling=gen_pb.SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                           ignore_eos=True),
            attention=opt_pb.AttentionOptions(mode=mode))
        tokens, final = [], None
        for r in self.gen.Generate(req, timeout=timeout):
            if r.HasField("chunk"):
                tokens.extend(r.chunk.token_ids)
            else:
                final = r.final
        assert final is not None, "the stream ended without its final message"
        assert len(tokens) == max_tokens, f"{len(tokens)} tokens, asked for {max_tokens}"
        return tokens

    def wait_ready(self, cid, timeout=120):
        """Polls GetContext until READY; raises on FAILED, deletion or the timeout."""
        end = time.time() + timeout
        while True:
            c = self.get(cid)
            if c.state == READY:
                return c
            if c.state == FAILED:
                raise AssertionError(f"context {cid} FAILED: {c.error}")
            if time.time() > end:
                raise AssertionError(f"context {cid} not READY after {timeout} s: "
                                     f"{STATE_NAMES.get(c.state)} {c.progress:.2f}")
            time.sleep(0.05)


def rpc_code(fn, *args, **kwargs):
    """Runs fn; returns (result, None) or (None, RpcError)."""
    try:
        return fn(*args, **kwargs), None
    except grpc.RpcError as e:
        return None, e


def random_tokens(rng, n, vocab=512):
    """n token ids in [3, vocab): no BOS/EOS/UNK inside a context body."""
    return [rng.randrange(3, vocab) for _ in range(n)]


def dump_store(data_dir, copy=True):
    """sqz-durability-dump over `data_dir` (a copy of it unless copy=False): {id: record dict}."""
    with tempfile.TemporaryDirectory(prefix="sqz-dump-") as tmp:
        target = data_dir
        if copy:
            target = os.path.join(tmp, "data")
            shutil.copytree(data_dir, target)
        r = subprocess.run([DUMP, target], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"sqz-durability-dump failed ({r.returncode}): {r.stderr}")
    out = {}
    for line in r.stdout.splitlines():
        rec = json.loads(line)
        out[rec["id"]] = rec
    return out


def seeded(seed):
    return random.Random(seed)
