"""Crash a random workload between every pair of I/O steps, recover, and
check: (a) every snapshot's image is exactly what it was when taken; (b)
diff(S) names every chunk whose content now differs from S's image. Some
workloads fill and free the disk (files, metadata or both) as they go: a
step refused with NoSpace changes nothing, and a crash anywhere still
recovers."""

import random
import shutil
import tempfile

import pytest

from blockmirror.errors import NoSpace
from blockmirror.storage import Node, WriteOp
from blockmirror.storage.crashfs import CrashFileSystem, SimulatedCrash

CHUNK = 4096
SIZES = {"a": 4 * CHUNK, "b": 3 * CHUNK}


def make_workload(seed: int, length: int = 24, full: bool = False) -> list[tuple]:
    """`full`: some steps fill or free the disk's files and metadata store."""
    rng = random.Random(seed)
    ops, labels = [], []
    for i in range(length):
        r = rng.random()
        vol = rng.choice(sorted(SIZES))
        size = SIZES[vol]
        offset = rng.randrange(size)
        n = min(rng.randrange(1, 2 * CHUNK), size - offset)
        if r < 0.15:
            labels.append(f"s{i}")
            ops.append(("snapshot", f"s{i}"))
        elif r < 0.22 and labels:
            ops.append(("delete", labels.pop(rng.randrange(len(labels)))))
        elif r < 0.30:
            ops.append(("zero", vol, offset, n, rng.random() < 0.5))
        elif r < 0.40:
            ops.append(("flush",))
        elif r < 0.55:
            batch = []
            for _ in range(rng.randrange(2, 5)):
                v = rng.choice(sorted(SIZES))
                o = rng.randrange(SIZES[v])
                batch.append((v, o, min(rng.randrange(1, CHUNK), SIZES[v] - o), rng.randrange(1, 255)))
            ops.append(("batch", batch))
        else:
            ops.append(("write", vol, offset, n, rng.randrange(1, 255), rng.random() < 0.2))
        if full and rng.random() < 0.25:
            ops.append(("full", rng.random() < 0.6, rng.random() < 0.4))
    return ops


class Run:
    """One run of a workload against a node on a crashing filesystem."""

    def __init__(self, seed: int, workdir: str, spare_limit: int | None = None, pipeline: str = "inline"):
        self.fs = CrashFileSystem(seed)
        self.path = workdir + "/node"
        self.spare_limit = spare_limit
        self.pipeline = pipeline
        self.node = Node.create(self.path, dict(SIZES), chunk_size=CHUNK, fs=self.fs, meta_synchronous="OFF",
                                spare_limit_bytes=spare_limit, pipeline=pipeline)
        self.node.writes.cow.writeback_group_bytes = 2 * CHUNK  # records written in several pieces, header last
        self.base_steps = self.fs.steps
        self.model = {v: bytearray(s) for v, s in SIZES.items()}
        self.images: dict[str, dict[str, bytes]] = {}
        self.unflushed = {v: set() for v in SIZES}  # chunks written since the last sync of the volume
        self.unflushed_at: dict[str, dict[str, set]] = {}
        self.ids: dict[str, int] = {}
        self.refused = 0  # steps a full disk refused

    def touch(self, vol, offset, n) -> None:
        self.unflushed[vol] |= set(range(offset // CHUNK, (offset + n - 1) // CHUNK + 1))

    def apply(self, op) -> None:
        """One step; a full disk may refuse it, and then it changed nothing."""
        if op[0] == "full":
            self.fs.disk_full, self.fs.meta_full = op[1], op[2]
            return
        if op[0] == "delete" and op[1] not in self.ids:
            return  # its snapshot was refused
        try:
            self._apply(op)
        except NoSpace:
            assert self.fs.disk_full or self.fs.meta_full, f"NoSpace with room on the disk: {op}"
            self.refused += 1
            if op[0] == "snapshot":
                del self.images[op[1]], self.unflushed_at[op[1]]

    def _apply(self, op) -> None:
        node, model = self.node, self.model
        kind = op[0]
        if kind in ("flush", "snapshot"):
            pass
        elif kind == "batch":
            for v, o, n, b in op[1]:
                self.touch(v, o, n)
        elif kind == "write" and op[5]:
            pass  # a FUA write syncs its volume: handled below
        elif kind != "delete":
            self.touch(op[1], op[2], op[3])
        if kind == "snapshot":
            # The image is fixed at the instant of the snapshot, committed or not.
            self.images[op[1]] = {v: bytes(m) for v, m in model.items()}
            self.unflushed_at[op[1]] = {v: set(c) for v, c in self.unflushed.items()}
            self.ids[op[1]] = node.snapshot(op[1]).id
            self.unflushed = {v: set() for v in SIZES}
        elif kind == "delete":
            node.delete_snapshot(self.ids[op[1]])
        elif kind == "zero":
            _, vol, offset, n, punch = op
            (node.trim if punch else node.write_zeroes)(vol, offset, n)
            model[vol][offset:offset + n] = bytes(n)
        elif kind == "flush":
            node.flush()
            self.unflushed = {v: set() for v in SIZES}
        elif kind == "batch":
            ops = [WriteOp(v, o, bytes([b]) * n) for v, o, n, b in op[1]]
            node.write_many(ops)
            for v, o, n, b in op[1]:
                model[v][o:o + n] = bytes([b]) * n
        else:
            _, vol, offset, n, byte, fua = op
            node.write(vol, offset, bytes([byte]) * n, fua=fua)
            model[vol][offset:offset + n] = bytes([byte]) * n
            if fua:
                self.unflushed[vol] = set()
            else:
                self.touch(vol, offset, n)


def verify(run: Run, node: Node, where: str) -> None:
    for snap in node.snapshots():
        image = run.images[snap.label]
        diff = node.diff(snap.id)
        for vol, size in SIZES.items():
            got = node.read_snapshot(snap.id, vol, 0, size)
            if snap.sealed:
                assert got == image[vol], f"{where}: snapshot {snap.label} image of {vol} changed"
            else:
                # Crashed before its seal: only writes never flushed before it may be missing.
                unflushed = run.unflushed_at[snap.label][vol]
                for c in range(size // CHUNK):
                    a = slice(c * CHUNK, (c + 1) * CHUNK)
                    if got[a] != image[vol][a]:
                        assert c in unflushed, f"{where}: unsealed {snap.label} lost flushed chunk {vol}:{c}"
            now = node.volumes[vol].read(0, size)
            for c in range(size // CHUNK):
                a, b = slice(c * CHUNK, (c + 1) * CHUNK), c
                if now[a] != image[vol][a]:
                    assert b in diff[vol], f"{where}: chunk {vol}:{c} differs from {snap.label} but is not in its diff"


def check_recovered(run: Run, rng: random.Random, where: str) -> None:
    run.fs.crash(rng)
    if run.fs.meta_full:  # still full at the restart: the recovery may need a commit
        try:
            node = Node.open(run.path, fs=run.fs, meta_synchronous="OFF", spare_limit_bytes=run.spare_limit,
                             pipeline=run.pipeline)
        except NoSpace:
            pass
        else:
            verify(run, node, where + ", reopened on a full disk")
            node.meta.close()  # dies again
            run.fs.crash(rng)
    run.fs.disk_full = run.fs.meta_full = False  # then there is room again
    node = Node.open(run.path, fs=run.fs, meta_synchronous="OFF", spare_limit_bytes=run.spare_limit,
                     pipeline=run.pipeline)
    try:
        verify(run, node, where)
        # The recovered node keeps working: writes after recovery are preserved
        # too, and survive a second crash (records of two lives in one COW file).
        if node.snapshots():
            s = node.snapshots()[-1]
            before = node.read_snapshot(s.id, "a", 0, 4 * CHUNK)
            node.write("a", 0, b"\x77" * CHUNK)
            node.write_many([WriteOp("a", CHUNK, b"\x78" * 2 * CHUNK), WriteOp("b", 0, b"\x79" * 10)])
            assert node.read_snapshot(s.id, "a", 0, 4 * CHUNK) == before
            assert {0, 1, 2} <= set(node.diff(s.id)["a"])
            node.meta.close()  # dies again, nothing flushed
            run.fs.crash(rng)
            node = Node.open(run.path, fs=run.fs, meta_synchronous="OFF", spare_limit_bytes=run.spare_limit,
                     pipeline=run.pipeline)
            verify(run, node, where + ", then a second crash")
            assert node.read_snapshot(s.id, "a", 0, 4 * CHUNK) == before, f"{where}: second crash changed {s.label}"
    finally:
        node.close()


def crash_everywhere(seed: int, workload: list[tuple], spare_limit: int | None = None,
                     pipeline: str = "inline") -> tuple[list[str], int]:
    """Run `workload` crashed before each of its I/O steps in turn, recover,
    check; returns the trace of the uncrashed run and how many of its steps
    a full disk refused."""
    tmp = tempfile.mkdtemp(prefix="bm-crash-")
    try:
        probe = Run(seed, tmp + "/probe", spare_limit, pipeline)
        probe.fs.trace_max = 1 << 20
        for op in workload:
            probe.apply(op)
        total = probe.fs.steps - probe.base_steps
        trace = list(probe.fs.trace)
        refused = probe.refused
        probe.fs.disk_full = probe.fs.meta_full = False
        probe.node.close()
        assert total > 30, "workload too small to mean anything"
        crashed = 0
        for k in range(total + 1):
            run = Run(seed, f"{tmp}/k{k}", spare_limit, pipeline)
            run.fs.crash_at_step = run.base_steps + k
            try:
                for op in workload:
                    run.apply(op)
            except SimulatedCrash:
                crashed += 1
            run.node.meta.close()  # the process died: uncommitted metadata is gone
            check_recovered(run, random.Random(seed * 1000 + k), f"seed={seed} crash at step {k} ({run.fs.trace[-1:]})")
            run.fs.close()
        assert crashed == total
        return trace, refused
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("seed", range(24))
def test_crash_at_every_io_step(seed):
    # Odd seeds keep spare COW files (deleted snapshots' files are reused by
    # newer ones). Half the seeds (each spare setting) run the deferred
    # pipeline: a batch's record sync and overwrites run only after the next
    # batch's originals are read and its record written.
    crash_everywhere(seed, make_workload(seed), spare_limit=1 << 20 if seed % 2 else 0,
                     pipeline="deferred" if seed % 4 in (1, 2) else "inline")


def test_crash_while_spare_cow_files_are_retired_and_reused():
    """A deleted snapshot's COW file becomes a spare, the next snapshot's
    originals overwrite its old slots: a crash at any step of that keeps
    every image and diff right."""
    workload = [("write", "a", 0, 4 * CHUNK, 1, False), ("write", "b", 0, 3 * CHUNK, 2, False),
                ("snapshot", "s1"), ("write", "a", 0, 4 * CHUNK, 3, False), ("write", "b", 100, CHUNK, 4, False),
                ("delete", "s1"), ("snapshot", "s2"), ("write", "a", CHUNK, 2 * CHUNK, 5, False),
                ("batch", [("b", 0, CHUNK, 6), ("a", 3 * CHUNK, 10, 7)]), ("snapshot", "s3"),
                ("delete", "s2"), ("write", "a", 0, 4 * CHUNK, 8, True), ("flush",)]
    trace, _ = crash_everywhere(99, workload, spare_limit=1 << 20)
    renames = [t for t in trace if t.startswith("rename")]
    assert any("spare-" in t.split()[2] for t in renames), f"no COW file was kept as a spare: {trace}"
    assert any("spare-" in t.split()[1] for t in renames), f"no spare was reused: {trace}"


@pytest.mark.parametrize("seed", range(100, 110))
def test_crash_at_every_io_step_while_the_disk_fills_and_frees(seed):
    _, refused = crash_everywhere(seed, make_workload(seed, length=32, full=True),
                                  spare_limit=1 << 20 if seed % 2 else 0,
                                  pipeline="deferred" if seed % 4 in (1, 2) else "inline")
    assert refused, "the disk never refused a step: nothing was tested"
