#!/usr/bin/env python3
"""How many messages does a Kafka topic hold? (for scripts; no kcat needed)

Asks the broker for the topic's partitions (Metadata v4, never auto-creating a
topic) and each partition's earliest and latest offsets (ListOffsets v1), and
prints one line per topic: name, partitions, messages (the sum over partitions
of latest - earliest). A topic that does not exist prints 0 partitions and 0
messages. Python standard library only. Meant for a single-broker dev stack:
every request goes to the bootstrap broker.

    scripts/kafka_offsets.py raw_prices price_alerts raw_prices.dlq
    scripts/kafka_offsets.py --brokers 127.0.0.1:9092 --count raw_prices.dlq   # just the number
    scripts/kafka_offsets.py --partitions raw_prices   # one line per partition
"""

import argparse
import socket
import struct
import sys

METADATA, LIST_OFFSETS = 3, 2
LATEST, EARLIEST = -1, -2
UNKNOWN_TOPIC_OR_PARTITION = 3


class Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        value = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return value

    def array(self, item):
        n = self.take(">i")
        return [item() for _ in range(max(n, 0))]


def string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


class Broker:
    def __init__(self, address: str, timeout: float):
        host, _, port = address.split(",")[0].rpartition(":")
        self.sock = socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout)
        self.sock.settimeout(timeout)
        self.correlation_id = 0

    def call(self, api_key: int, version: int, body: bytes) -> Reader:
        self.correlation_id += 1
        header = struct.pack(">hhi", api_key, version, self.correlation_id) + string("conscope-offsets")
        frame = header + body
        self.sock.sendall(struct.pack(">i", len(frame)) + frame)
        (size,) = struct.unpack(">i", self.read(4))
        reader = Reader(self.read(size))
        if reader.take(">i") != self.correlation_id:
            raise ValueError("response correlation id mismatch")
        return reader

    def read(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            data += chunk
        return bytes(data)

    def partitions(self, topic: str) -> list:
        """Partition ids of a topic; [] when it does not exist."""
        body = struct.pack(">i", 1) + string(topic) + struct.pack(">?", False)
        r = self.call(METADATA, 4, body)
        r.take(">i")  # throttle_time_ms
        r.array(lambda: (r.take(">i"), r.string(), r.take(">i"), r.string()))  # brokers
        r.string()  # cluster_id
        r.take(">i")  # controller_id

        def partition():
            error, index, _leader = r.take(">hii")
            r.array(lambda: r.take(">i"))  # replicas
            r.array(lambda: r.take(">i"))  # isr
            return error, index

        def topic_entry():
            error, name, _internal = r.take(">h"), r.string(), r.take(">?")
            return error, name, r.array(partition)

        for error, name, partitions in r.array(topic_entry):
            if name != topic:
                continue
            if error == UNKNOWN_TOPIC_OR_PARTITION:
                return []
            if error != 0:
                raise ValueError(f"metadata for {topic}: error code {error}")
            return sorted(index for _error, index in partitions)
        return []

    def offsets(self, topic: str, partitions: list, which: int) -> dict:
        body = struct.pack(">ii", -1, 1) + string(topic) + struct.pack(">i", len(partitions))
        for index in partitions:
            body += struct.pack(">iq", index, which)
        r = self.call(LIST_OFFSETS, 1, body)
        result = {}
        for _name, entries in r.array(lambda: (r.string(), r.array(lambda: r.take(">ihqq")))):
            for index, error, _timestamp, offset in entries:
                if error != 0:
                    raise ValueError(f"offsets of {topic}/{index}: error code {error}")
                result[index] = offset
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("topics", nargs="+")
    parser.add_argument("--brokers", default="127.0.0.1:9092", help="HOST:PORT (default 127.0.0.1:9092)")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--count", action="store_true", help="print only the total number of messages")
    parser.add_argument("--partitions", action="store_true", help="one line per partition")
    args = parser.parse_args()
    try:
        broker = Broker(args.brokers, args.timeout)
        total = 0
        for topic in args.topics:
            partitions = broker.partitions(topic)
            low = broker.offsets(topic, partitions, EARLIEST) if partitions else {}
            high = broker.offsets(topic, partitions, LATEST) if partitions else {}
            messages = sum(high[p] - low[p] for p in partitions)
            total += messages
            if args.partitions:
                for p in partitions:
                    print(f"{topic}\t{p}\t{low[p]}\t{high[p]}")
            elif not args.count:
                print(f"{topic}\t{len(partitions)} partitions\t{messages} messages")
        if args.count:
            print(total)
    except (OSError, ValueError, struct.error) as error:
        print(f"kafka_offsets: {args.brokers}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
