"""The README's main job: start squeezed, show that it serves, stop it.

Starts the real daemon with the given configuration on a free loopback port, checks gRPC health,
prints GetServerInfo, then sends SIGTERM and waits for a clean exit.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "lib"))
import squeeze_testlib as lib  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--squeezed", required=True)
    p.add_argument("--stubs", required=True)
    p.add_argument("--config", required=True)
    args = p.parse_args()
    lib.import_stubs(args.stubs)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from squeeze.v1 import generation_service_pb2 as gen_pb
    from squeeze.v1 import generation_service_pb2_grpc as gen_grpc

    server = lib.Squeezed(args.squeezed, config_text=open(args.config).read()).start()
    print(f"squeezed is listening on {server.address}")
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                               timeout=10)
            print("health:", health_pb2.HealthCheckResponse.ServingStatus.Name(health.status))
            info = gen_grpc.GenerationServiceStub(channel).GetServerInfo(
                gen_pb.GetServerInfoRequest(), timeout=10)
            print("server info:")
            print("  version:", info.version)
            print("  backend:", info.backend, "|", ", ".join(info.devices))
            print("  model:", info.model.name or "(not loaded yet)", "|", info.model.path)
            print("  features:", ", ".join(info.features))
    finally:
        code = server.terminate()
        print(f"squeezed stopped with exit code {code}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
