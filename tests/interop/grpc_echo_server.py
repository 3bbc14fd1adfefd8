"""A gRPC server on Python's grpcio (gRPC C-core, no one here wrote it) for the proxy's
end-to-end tests: `/warden.test.Echo/Say` answers `grpcio:` + the request bytes, and
puts the `te` header it received in the response's initial metadata. grpc-core refuses
a request without `te: trailers` (RST_STREAM INTERNAL_ERROR), as the gRPC spec allows.

    python grpc_echo_server.py ADDR:PORT
"""
import json
import sys
from concurrent import futures

import grpc


def say(request, context):
    md = dict(context.invocation_metadata())
    sys.stderr.write(json.dumps({"message": "request", "app": "grpcio", "metadata": md}) + "\n")
    sys.stderr.flush()
    return b"grpcio:" + request


class Handler(grpc.GenericRpcHandler):
    def service(self, details):
        if details.method == "/warden.test.Echo/Say":
            return grpc.unary_unary_rpc_method_handler(say)
        return None


if __name__ == "__main__":
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((Handler(),))
    server.add_insecure_port(sys.argv[1])
    server.start()
    sys.stderr.write(json.dumps({"message": "serving", "addr": sys.argv[1]}) + "\n")
    sys.stderr.flush()
    server.wait_for_termination()
