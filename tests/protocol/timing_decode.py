"""Timing check (not a test): decode throughput of Write frames through a
Connection, fed as 1 MiB chunks or via get_buffer/buffer_updated.

    .venv/bin/python tests/protocol/timing_decode.py [payload_bytes ...]

Prints GB/s per payload size; the target is well above 1 GB/s at 64 KiB.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from proto_helpers import established_pair  # noqa: E402

from blockmirror.protocol import Write  # noqa: E402

STREAM_BYTES = 512 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024


def measure(payload_bytes: int, buffered: bool) -> float:
    primary, secondary = established_pair(volume_bytes=1 << 40)
    data = os.urandom(payload_bytes)
    frames = STREAM_BYTES // payload_bytes
    # Encode once per seq (the encoder is not what we time), then cut into chunks.
    stream = b"".join(primary.send(Write(seq, 0, (seq * payload_bytes) % (1 << 39), data))
                      for seq in range(1, frames + 1))
    view = memoryview(stream)
    got = 0
    start = time.perf_counter()
    for pos in range(0, len(stream), CHUNK_BYTES):
        chunk = view[pos:pos + CHUNK_BYTES]
        if buffered:  # what an asyncio BufferedProtocol does, minus the recv_into syscall
            buf = secondary.get_buffer(len(chunk))
            n = min(len(buf), len(chunk))
            buf[:n] = chunk[:n]
            secondary.buffer_updated(n)
            if n < len(chunk):
                secondary.receive_data(chunk[n:])
        else:
            secondary.receive_data(chunk)
        while (event := secondary.next_event()) is not None:
            got += len(event.data)
    elapsed = time.perf_counter() - start
    assert got == frames * payload_bytes, (got, frames * payload_bytes)
    return got / elapsed / 1e9


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [4096, 65536, 1024 * 1024]
    for payload_bytes in sizes:
        for buffered in (False, True):
            rate = max(measure(payload_bytes, buffered) for _ in range(3))
            mode = "get_buffer  " if buffered else "receive_data"
            print(f"{payload_bytes:>8} B payloads, {mode}: {rate:5.2f} GB/s")


if __name__ == "__main__":
    main()
