"""A gRPC client that knows nothing of keel's protos, as generic tools (grpcurl, a Kubernetes
probe, a dashboard) are: it lists the server's services through reflection, asks the standard
health service, and calls keel.control.v1.Control/GetStatus with message types it builds from the
descriptors reflection returns. Prints one JSON object; tests/launcher/test_control.cpp checks it.

    python generic_grpc_client.py HOST:PORT [--watch-health]
With --watch-health it then follows the health service's Watch stream until the server goes away
and prints the statuses it saw, as a second JSON object.
Needs grpcio, grpcio-reflection and grpcio-health-checking (.ci/run installs them in build/pyvenv).
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

try:  # protobuf >= 4.21
    from google.protobuf.message_factory import GetMessageClass
except ImportError:  # older protobuf
    from google.protobuf.message_factory import MessageFactory

    def GetMessageClass(descriptor):
        return MessageFactory().GetPrototype(descriptor)


def main(address, watch_health):
    channel = grpc.insecure_channel(address)
    reflection = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(reflection.get_services())
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=10
    )
    pool = descriptor_pool.DescriptorPool(reflection)
    method = pool.FindServiceByName("keel.control.v1.Control").methods_by_name["GetStatus"]
    request_type = GetMessageClass(method.input_type)
    reply_type = GetMessageClass(method.output_type)
    get_status = channel.unary_unary(
        "/keel.control.v1.Control/GetStatus",
        request_serializer=request_type.SerializeToString,
        response_deserializer=reply_type.FromString,
    )
    status = MessageToDict(get_status(request_type(), timeout=10))
    print(
        json.dumps(
            {
                "services": services,
                "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
                "status": status,
            }
        ),
        flush=True,
    )
    if watch_health:
        seen = []
        try:
            for reply in health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="")
            ):
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        except grpc.RpcError as e:  # the server went away
            seen.append("ended: " + e.code().name)
        print(json.dumps({"health_watch": seen}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], "--watch-health" in sys.argv[2:])
