#!/usr/bin/env python3
"""Is a Kafka broker really answering at HOST:PORT?

A TCP connect is not enough: a broker that is still opening its store accepts
connections before it can serve. This sends a Kafka ApiVersions v0 request and
checks the response is well formed (same correlation id, error code 0, a
non-empty API list whose length matches the frame). Python standard library
only, so it works on a machine that has nothing but python3.

Exit status: 0 = the broker answered; 1 = no (or malformed) answer.

    scripts/kafka_ping.py 127.0.0.1:9092
    scripts/kafka_ping.py --timeout 2 --quiet 127.0.0.1:9092
"""

import argparse
import socket
import struct
import sys

API_VERSIONS = 18
CORRELATION_ID = 0x636F6E73  # "cons"
CLIENT_ID = b"conscope-ping"


def request() -> bytes:
    # Request header v1: api_key, api_version, correlation_id, client_id
    # (nullable string); ApiVersions v0 has an empty body.
    body = struct.pack(">hhih", API_VERSIONS, 0, CORRELATION_ID, len(CLIENT_ID)) + CLIENT_ID
    return struct.pack(">i", len(body)) + body


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def ping(host: str, port: int, timeout: float) -> list:
    """Returns the broker's (api_key, min, max) list, or raises."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(request())
        (size,) = struct.unpack(">i", read_exactly(sock, 4))
        if not 10 <= size <= 1 << 20:
            raise ValueError(f"implausible response size {size}")
        frame = read_exactly(sock, size)
    # Response header v0: correlation_id. Body v0: error_code, [api_key min max].
    correlation_id, error_code, count = struct.unpack_from(">ihi", frame, 0)
    if correlation_id != CORRELATION_ID:
        raise ValueError(f"correlation id {correlation_id:#x}, expected {CORRELATION_ID:#x}")
    if error_code != 0:
        raise ValueError(f"ApiVersions error code {error_code}")
    if count <= 0 or size != 10 + 6 * count:
        raise ValueError(f"{count} API versions in a {size}-byte frame")
    apis = [struct.unpack_from(">hhh", frame, 10 + 6 * i) for i in range(count)]
    if not any(key == API_VERSIONS for key, _, _ in apis):
        raise ValueError("ApiVersions missing from the broker's API list")
    return apis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:9092", help="HOST:PORT")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args()
    host, _, port = args.address.rpartition(":")
    try:
        apis = ping(host or "127.0.0.1", int(port), args.timeout)
    except (OSError, ValueError, struct.error) as error:
        if not args.quiet:
            print(f"kafka_ping: {args.address}: no Kafka answer: {error}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"kafka_ping: {args.address}: Kafka broker answered, {len(apis)} APIs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
