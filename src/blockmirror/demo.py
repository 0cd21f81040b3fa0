"""`make demo`: a walkthrough of blockmirror on one machine.

Until the daemons land this shows the storage engine the mirroring rests on
(the method's steps 64-74): init a node, write, take a snapshot at a link
failure, keep writing, show the diff that a resync would send and the
snapshot's preserved image. Exits 0 only if every check holds.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tempfile

from blockmirror.storage import Node

VOLUME_BYTES = 64 << 20
CHUNK_BYTES = 64 << 10


def sh(*args: str) -> str:
    cmd = [sys.executable, "-m", "blockmirror", *args]
    print(f"\n$ blockmirror {' '.join(shlex.quote(a) for a in args)}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout.rstrip())
    if proc.returncode != 0:
        print(proc.stderr.rstrip())
        raise SystemExit(f"demo failed: blockmirror {args[0]} exited {proc.returncode}")
    return proc.stdout


def pattern(tag: str, n: int) -> bytes:
    block = hashlib.sha256(tag.encode()).digest()
    return (block * (n // len(block) + 1))[:n]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="blockmirror-demo-") as tmp:
        node_dir = os.path.join(tmp, "primary")
        print("blockmirror demo: the storage engine under the mirror")
        sh("init", node_dir, "--volume", "db=64MiB", "--volume", "logs=16MiB")

        print("\n# a host writes 8 MiB to db and 1 MiB to logs")
        with Node.open(node_dir) as node:
            node.write("db", 0, pattern("base", 8 << 20))
            node.write("logs", 0, pattern("log", 1 << 20))
            node.flush()
            before = node.volumes["db"].read(0, VOLUME_BYTES)

        print("\n# the link fails: pause writes, snapshot every volume at one instant, resume")
        sh("snapshot", "create", node_dir, "--label", "link-down")

        print("\n# the host keeps writing while the link is down: 3 small writes to db, 1 to logs")
        with Node.open(node_dir) as node:
            node.write("db", 100 * 1024, b"x" * 4096)               # inside chunk 1
            node.write("db", 40 << 20, pattern("new", 200 * 1024))   # chunks 640-643
            node.write("db", (60 << 20) - 10, b"y" * 20)             # straddles chunks 959-960
            node.write("logs", 1 << 20, pattern("log2", 4096))       # chunk 16
            after = node.volumes["db"].read(0, VOLUME_BYTES)

        print("\n# what a resync sends: the chunks named by the exception tables, nothing else")
        out = sh("diff", node_dir, "1")
        sh("snapshot", "list", node_dir)

        image = os.path.join(tmp, "db-at-link-down.img")
        sh("snapshot", "export", node_dir, "1", "db", image)
        with open(image, "rb") as f:
            snap_image = f.read()

        changed = {i for i in range(VOLUME_BYTES // CHUNK_BYTES)
                   if before[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES] != after[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]}
        checks = [
            ("snapshot image equals the volume at the link failure", snap_image == before),
            ("diff names exactly the 7 changed chunks of db", "db: 7 chunks changed" in out and len(changed) == 7),
            ("diff names 1 changed chunk of logs", "logs: 1 chunks changed" in out),
        ]
        print("\nsummary:")
        ok = True
        for what, passed in checks:
            print(f"  [{'ok' if passed else 'FAIL'}] {what}")
            ok &= passed
        print(f"  a resync would send {len(changed) + 1} chunks ({(len(changed) + 1) * CHUNK_BYTES >> 10} KiB) "
              f"of {(VOLUME_BYTES + (16 << 20)) >> 20} MiB")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
