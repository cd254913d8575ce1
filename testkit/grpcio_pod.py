"""A pod served by grpc-core (Python grpcio): `user.User/Call` on one address, with a maximum
connection age, as many production gRPC servers run. grpc-core ends an aged connection the way
it ends any: a GOAWAY, then the calls in flight finish within the grace.

    python3 grpcio_pod.py ADDRESS POD_NAME MAX_AGE_MS

It prints `ready PORT` once it listens, then serves until killed. The messages are encoded by
hand (one string field each), so no generated code is needed.
"""

import sys
import time
from concurrent import futures

import grpc


def encode_string(field, text):
    data = text.encode()
    out = bytearray([field << 3 | 2])
    n = len(data)
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + data


def decode_name(request):
    # CallRequest { string name = 1; }: the first field, when it is there.
    if len(request) < 2 or request[0] != 0x0A:
        return ""
    length, shift, i = 0, 0, 1
    while i < len(request):
        byte = request[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
    return request[i : i + length].decode(errors="replace")


def main():
    address, pod_name, max_age_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def call(request, context):
        return encode_string(1, f"Hello {decode_name(request)} from {pod_name}")

    handler = grpc.method_handlers_generic_handler(
        "user.User",
        {"Call": grpc.unary_unary_rpc_method_handler(call)},
    )
    options = [("grpc.so_reuseport", 0)]
    if max_age_ms > 0:
        options += [
            ("grpc.max_connection_age_ms", max_age_ms),
            ("grpc.max_connection_age_grace_ms", 5000),
        ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(address)
    server.start()
    print(f"ready {port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
