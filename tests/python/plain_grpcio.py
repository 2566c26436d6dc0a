"""A gRPC client as a newcomer writes it from grpcio's own docs: plain `grpcio`, the target
`unix://<path>`, no channel options, the admin token from `gateway.token` beside the socket as
metadata. It calls health (grpc.health.v1) and reflection through grpcio-reflection's client
(v1alpha only), which need no token, an `Apps` method without the token (refused:
UNAUTHENTICATED, saying where the token is) and with it; then the same call with every
`:authority` a client may send (gRPC's C core: the percent-encoded path; grpc-java: the bare
path; grpc-go: `localhost`), on the unix socket and, when a TCP gateway and its token are
given, on TCP too. Prints one `ok ...` line per check; exits non-zero at the first failure.

    python plain_grpcio.py SOCKET_PATH [TCP_ADDR TOKEN]
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from p2pos.app.v1 import app_pb2, app_pb2_grpc
from p2pos.node.v1 import node_pb2, node_pb2_grpc

DEADLINE = 10


def check_channel(channel, what, metadata):
    info = node_pb2_grpc.NodeStub(channel).GetInfo(
        node_pb2.GetInfoRequest(), timeout=DEADLINE, metadata=metadata
    )
    assert info.peer_id.startswith("12D3KooW"), info
    print("ok", what, flush=True)


def main():
    socket_path = sys.argv[1]
    target = "unix://" + socket_path
    with open(os.path.join(os.path.dirname(socket_path), "gateway.token")) as f:
        admin = (("authorization", "Bearer " + f.read().strip()),)
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING, health
        print("ok health", flush=True)

        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "p2pos.app.v1.Apps" in services, services
        print("ok reflection v1alpha:", " ".join(sorted(services)), flush=True)

        try:
            app_pb2_grpc.AppsStub(channel).ListApps(app_pb2.ListAppsRequest(), timeout=DEADLINE)
            raise AssertionError("a call without a token was answered")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
            assert "gateway.token" in err.details(), err.details()
        print("ok no token: unauthenticated", flush=True)
        apps = app_pb2_grpc.AppsStub(channel).ListApps(
            app_pb2.ListAppsRequest(), timeout=DEADLINE, metadata=admin
        )
        print("ok apps:", len(apps.apps), flush=True)
        check_channel(channel, "default authority", admin)

    authorities = [
        socket_path.lstrip("/").replace("/", "%2F"),
        socket_path,
        "localhost",
        "",
    ]
    for authority in authorities:
        options = [("grpc.default_authority", authority)] if authority else []
        with grpc.insecure_channel(target, options=options) as channel:
            check_channel(channel, f"unix authority {authority!r}", admin)

    if len(sys.argv) > 3:
        tcp, token = sys.argv[2], sys.argv[3]
        metadata = (("authorization", "Bearer " + token),)
        for authority in authorities[:3] + [tcp]:
            options = [("grpc.default_authority", authority)]
            with grpc.insecure_channel(tcp, options=options) as channel:
                check_channel(channel, f"tcp authority {authority!r}", metadata)


if __name__ == "__main__":
    main()
