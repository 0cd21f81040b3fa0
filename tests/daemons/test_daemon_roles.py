"""Role changes through real daemons: planned switchover, failover after
kill -9 of the primary and failback, and the refusals that keep a node from
running in the wrong role. Each ends with `qemu-img compare` of the nodes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

from blockmirror.testing.daemon import Daemon, converged
from blockmirror.testing.host import HotAreaWriter
from blockmirror.testing.proxy import start_proxy
from blockmirror.testing.nodes import CHUNK, make_nodes, primary_args, read_volume, secondary_args
from blockmirror.testing.tools import assert_identical, free_port, qemu_io, read_export


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockmirror", *args], capture_output=True, text=True, timeout=60)


def ok(*args: str) -> str:
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def refused(*args: str) -> tuple[str, str]:
    """A refusal: exit 1, one Error: line and one Try: line, no traceback."""
    proc = cli(*args)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("Error:", "Try:"))]
    assert proc.returncode == 1 and len(lines) == 2 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0], lines[1]


def start_secondary(node_dir: str, secret: str, port: int) -> Daemon:
    return Daemon("secondary", node_dir, *secondary_args(secret, listen=f"127.0.0.1:{port}"))


def start_primary(node_dir: str, secret: str, port: int, *extra: str) -> Daemon:
    return Daemon("primary", node_dir, *primary_args(secret, ("127.0.0.1", port), *extra))


def synced_pair(tmp_path):
    """A pair that mirrored 4 MiB of data and stopped cleanly:
    (primary dir, secondary dir, secret)."""
    p_dir, s_dir, secret = make_nodes(tmp_path)
    port = free_port()
    s = start_secondary(s_dir, secret, port)
    p = start_primary(p_dir, secret, port)
    try:
        qemu_io(p.uri("vol0"), "write -P 0x31 0 4M")
        p.wait_for(converged, what="initial sync")
        assert_identical(p, s)
    finally:
        assert p.stop() == 0 and s.stop() == 0
    return p_dir, s_dir, secret


def exported(tmp_path, node_dir: str, snap, volume: str) -> bytes:
    """A volume's image as of a snapshot, through `blockmirror snapshot export`."""
    out = tmp_path / f"export-{os.path.basename(node_dir)}-{snap}-{volume}.img"
    ok("snapshot", "export", node_dir, str(snap), volume, str(out))
    return out.read_bytes()


def switch(to_primary: str, to_secondary: str, secret: str, port: int) -> None:
    """A planned switchover of a pair stopped in sync: demote, promote,
    start both in their new roles; nothing is resent, the images match."""
    ok("demote", to_secondary)
    ok("promote", to_primary)
    s = start_secondary(to_secondary, secret, port)
    p = start_primary(to_primary, secret, port)
    try:
        st = p.wait_for(converged, what="the switched pair mirroring")
        assert sent(st) == ("incremental", 0), st["last_resync"]
        assert_identical(p, s)
    finally:
        assert p.stop() == 0 and s.stop() == 0


def parted_pair(tmp_path, write: str) -> tuple[str, str, str, int]:
    """A synced pair that parted: the secondary stopped, the primary went on
    with `write` (a qemu-io command on vol0), then stopped too:
    (primary dir, secondary dir, secret, port)."""
    a, b, secret = synced_pair(tmp_path)
    port = free_port()
    s = start_secondary(b, secret, port)
    p = start_primary(a, secret, port)
    p.wait_for(converged, what="mirroring")
    assert s.stop() == 0
    p.wait_for(lambda st: st["state"] == "disconnected", what="the link down")
    qemu_io(p.uri("vol0"), write)
    assert p.stop() == 0
    return a, b, secret, port


def sent(st: dict) -> tuple[str, int]:
    last = st["last_resync"]
    return last["kind"], last["chunks"]


def test_planned_switchover_resends_nothing(tmp_path):
    a, b, secret = synced_pair(tmp_path)
    assert "demoted" in ok("demote", a)
    assert "promoted" in ok("promote", b)
    port = free_port()
    new_s = start_secondary(a, secret, port)
    new_p = start_primary(b, secret, port)
    try:
        st = new_p.wait_for(converged, what="the switched pair mirroring")
        assert sent(st) == ("incremental", 0), st["last_resync"]
        assert_identical(new_p, new_s)
        qemu_io(new_p.uri("vol1"), "write -P 0x77 1M 256K")  # the new primary serves writes, mirrored
        new_p.wait_for(converged, what="mirroring a write on the new primary")
        assert_identical(new_p, new_s)
    finally:
        assert new_p.stop() == 0 and new_s.stop() == 0
    switch(to_primary=a, to_secondary=b, secret=secret, port=port)  # and back


def test_failover_after_kill9_then_failback(tmp_path):
    a, b, secret = synced_pair(tmp_path)
    port = free_port()
    s = start_secondary(b, secret, port)
    proxy = start_proxy("thread", s.listen, str(tmp_path))
    p = start_primary(a, secret, proxy.address[1])
    p.wait_for(converged, what="mirroring")
    writer = HotAreaWriter(p.uri("vol1"), area_bytes=1 << 20, seed=11)
    try:
        writer.wait_writes(30)
        proxy.blackhole()  # the link goes silent: async writes go on, unreplicated
        writer.wait_writes(30)
        p.kill9()  # the primary is lost while its host writes
    finally:
        writer.stop(errors_expected=True)
        proxy.close()
    assert s.stop() == 0
    lost_image = read_volume(a, "vol1")  # what the old primary holds, its unreplicated writes included

    out = ok("promote", b)
    assert "promoted" in out and "next: blockmirror primary" in out
    common = read_volume(b, "vol1")  # the last image both nodes shared
    old_own = {c for c in range(len(common) // CHUNK)
               if common[c * CHUNK:(c + 1) * CHUNK] != lost_image[c * CHUNK:(c + 1) * CHUNK]}
    assert old_own, "the old primary held writes its secondary never got"
    # The new primary serves its host at once; its peer comes later.
    new_p = start_primary(b, secret, port)
    own = [(3 * CHUNK, CHUNK), (9 * CHUNK, 2 * CHUNK)]  # 3 chunks of vol0: about 1% of the pair
    for off, length in own:
        qemu_io(new_p.uri("vol0"), f"write -P 0x5a {off} {length}")
    assert new_p.status()["state"] == "disconnected"

    out = ok("demote", a)
    m = re.search(r"(\d+) chunks of its own", out)
    assert m, out
    own_old = int(m.group(1))
    snap = re.search(r"kept in snapshot (\d+) \((discarded-[0-9TZ]+)\)", out)
    assert snap, out
    new_s = start_secondary(a, secret, port)
    try:
        st = new_p.wait_for(converged, timeout_s=30, what="the old primary catching up as the secondary")
        kind, chunks = sent(st)
        assert kind == "incremental", st["last_resync"]
        # Exactly the union of what each side changed since the common point:
        # the old primary's chunks that differ from it, and the 3 new ones.
        assert chunks == len(old_own) + 3, (chunks, sorted(old_own), own_old)
        assert own_old >= len(old_own), "demote counted every chunk the old primary may have changed"
        st = new_s.status()
        assert (st["discarded_chunks"], st["discarded_snapshot"]) == (own_old, int(snap.group(1)))
        assert_identical(new_p, new_s)
    finally:
        assert new_p.stop() == 0 and new_s.stop() == 0
    # The old primary's last image is in its discarded-... snapshot.
    assert exported(tmp_path, a, snap.group(1), "vol1") == lost_image

    switch(to_primary=a, to_secondary=b, secret=secret, port=port)  # failback


def test_primary_on_a_secondary_is_refused_but_read_only_is_not(tmp_path):
    _, b, secret = synced_pair(tmp_path)
    err, hint = refused("primary", b, "--nbd", "127.0.0.1:0")
    assert err == f"Error: {b} is a secondary: its volumes follow its primary and are not writable here"
    assert f"blockmirror promote {b}" in hint
    err, hint = refused("primary", b, *primary_args(secret, ("127.0.0.1", 1)))
    assert "is a secondary" in err and "promote" in hint
    d = Daemon("primary", b, "--nbd", "127.0.0.1:0", "--read-only")
    try:
        assert read_export(d.uri("vol0"))[:4 << 20] == b"\x31" * (4 << 20)
    finally:
        assert d.stop() == 0


def test_secondary_on_a_primary_is_refused(tmp_path):
    a, _, secret = synced_pair(tmp_path)
    err, hint = refused("secondary", a, *secondary_args(secret))
    assert "is a primary" in err and f"blockmirror demote {a}" in hint


def test_a_start_that_fails_binds_nothing(tmp_path):
    p_dir, s_dir, secret = make_nodes(tmp_path)
    with socket.socket() as holder:  # the secondary's port is taken: its start fails
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        err, _ = refused("secondary", s_dir, *secondary_args(secret, listen=f"127.0.0.1:{busy}"))
    assert "already in use" in err
    # A typo in --pair: the handshake is refused, the secondary stays unbound.
    port = free_port()
    s = Daemon("secondary", s_dir, *secondary_args(secret, "--pair", "db-mirorr", listen=f"127.0.0.1:{port}"))
    p = start_primary(p_dir, secret, port, "--pair", "db-mirror")
    try:
        p.wait_for(lambda st: "db-mirorr" in p.log(), timeout_s=15, what="the pair mismatch in the primary's log")
        assert p.status()["state"] == "initial-sync"
    finally:
        assert s.stop() == 0
    # Neither failed start bound the secondary: it runs under the right name, or as a primary.
    s = Daemon("secondary", s_dir, *secondary_args(secret, "--pair", "db-mirror", listen=f"127.0.0.1:{port}"))
    try:
        p.wait_for(converged, timeout_s=30, what="the pair under the right name")
        assert_identical(p, s)
    finally:
        assert p.stop() == 0 and s.stop() == 0
    # Bound now: the other name is refused.
    err, hint = refused("secondary", s_dir, *secondary_args(secret, "--pair", "db-mirorr"))
    assert "belongs to pair 'db-mirror'" in err and hint == "Try: start it with --pair db-mirror"


def test_promote_and_demote_refusals(tmp_path):
    p_dir, s_dir, secret = make_nodes(tmp_path)
    err, hint = refused("promote", s_dir)  # never synced
    assert "never completed a sync" in err and "--force" in hint
    port = free_port()
    s = start_secondary(s_dir, secret, port)
    try:
        err, hint = refused("promote", s_dir)
        assert "in use by a running daemon" in err and "stop it first" in hint
    finally:
        assert s.stop() == 0
    a, b, secret = synced_pair(tmp_path / "synced")
    err, hint = refused("demote", b)
    assert "already a secondary" in err and "blockmirror secondary" in hint
    err, hint = refused("promote", a)
    assert "already a primary" in err
    out = ok("promote", "--force", s_dir)
    assert "next sync is a full one" in out


def test_split_brain_is_refused_then_resolved_by_discarding_one_side(tmp_path):
    # The pair parts; the primary goes on serving (3 chunks of its own).
    a, b, secret, port = parted_pair(tmp_path, "write -P 0xa1 5M 192K")
    a_image = read_volume(a, "vol0")
    # Meanwhile the secondary was promoted and served 2 chunks of its own.
    ok("promote", b)
    new_p = start_primary(b, secret, port)
    qemu_io(new_p.uri("vol1"), "write -P 0xb2 0 128K")
    b_image = read_export(new_p.uri("vol1"))
    out = ok("demote", a)  # without --discard-my-data
    assert "3 of them were written after the pair parted" in out and "split brain" in out
    new_s = start_secondary(a, secret, port)
    try:
        st = new_p.wait_for(lambda st: st["state"] == "split-brain", timeout_s=30, what="the split brain")
        assert st["split_brain"] == {"primary_chunks": 2, "secondary_chunks": 3}
        table = ok("status", b)
        assert re.search(r"^state\s+split-brain$", table, re.M) and "primary 2 chunks, secondary 3" in table
        assert "SPLIT_BRAIN" in new_s.log() or "split brain" in new_s.log()
        assert new_s.wait_for(lambda st: st["state"] == "split-brain", what="the secondary's view")
        # Neither image changed.
        assert read_export(new_p.uri("vol1")) == b_image
        assert read_export(new_s.uri("vol0")) == a_image
    finally:
        assert new_s.stop() == 0
    # Resolve: the old primary's writes lose (kept in its discarded-... snapshot).
    out = ok("demote", "--discard-my-data", a)
    snap = re.search(r"kept in snapshot (\d+)", out)
    assert "loses to its primary's" in out and snap, out
    new_s = start_secondary(a, secret, port)
    try:
        st = new_p.wait_for(converged, timeout_s=30, what="the resync after the split brain")
        assert sent(st) == ("incremental", 5), st["last_resync"]  # the union of both sides' chunks
        assert st["split_brain"] is None and st["state"] == "mirroring"
        assert_identical(new_p, new_s)
    finally:
        assert new_p.stop() == 0 and new_s.stop() == 0
    assert exported(tmp_path, a, snap.group(1), "vol0") == a_image


def test_a_copy_of_the_primary_never_lets_the_original_erase_what_it_wrote(tmp_path):
    """`cp -a` of the primary's directory run against the secondary, writes
    on it; then the original primary comes back: refused (split brain), not
    a silent full sync; discarding the secondary's data resolves it."""
    a, b, secret = synced_pair(tmp_path)
    c = str(tmp_path / "copy")
    subprocess.run(["cp", "-a", a, c], check=True)
    port = free_port()
    s = start_secondary(b, secret, port)
    copy = start_primary(c, secret, port)
    assert "is a copy of node" in copy.log()
    try:
        copy.wait_for(converged, what="the copy mirroring to the secondary")
        qemu_io(copy.uri("vol0"), "write -P 0xc3 1M 128K")
        copy.wait_for(converged, what="the copy's writes mirrored")
        copied = read_export(s.uri("vol0"))
    finally:
        assert copy.stop() == 0
    original = start_primary(a, secret, port)
    try:
        st = original.wait_for(lambda st: st["state"] == "split-brain", timeout_s=30, what="the refusal")
        assert st["split_brain"] == {"primary_chunks": None, "secondary_chunks": None}
        assert "not in this node's history" in original.log()
        assert read_export(s.uri("vol0")) == copied  # nothing erased
    finally:
        assert s.stop() == 0
    out = ok("demote", "--discard-my-data", b)  # the secondary's data (the copy's) loses
    snap = re.search(r"kept in snapshot (\d+)", out)
    assert snap, out
    s = start_secondary(b, secret, port)
    try:
        st = original.wait_for(converged, timeout_s=30, what="the resync once the secondary may lose")
        assert st["last_resync"]["kind"] == "full" and st["split_brain"] is None
        assert_identical(original, s)
    finally:
        assert original.stop() == 0 and s.stop() == 0
    assert exported(tmp_path, b, snap.group(1), "vol0") == copied


def test_a_user_snapshot_of_a_running_primary_survives_restarts(tmp_path):
    a, b, secret = synced_pair(tmp_path)
    port = free_port()
    s = start_secondary(b, secret, port)
    p = start_primary(a, secret, port)
    try:
        p.wait_for(converged, what="mirroring")
        out = ok("snapshot", "create", a, "--label", "before-upgrade")  # asks the daemon
        m = re.match(r"snapshot (\d+) \(before-upgrade\) taken by the running daemon", out)
        assert m, out
        snap = int(m.group(1))
        qemu_io(p.uri("vol0"), "write -P 0xee 0 1M")  # after the snapshot: not in it
        st = p.wait_for(converged, what="mirroring the write")
        assert any(x["id"] == snap and not x["internal"] for x in st["snapshots"])
        err, hint = refused("snapshot", "create", b, "--label", "x")
        assert "running secondary takes no user snapshots" in err and "snapshot the primary" in hint
        assert_identical(p, s)
    finally:
        assert p.stop() == 0 and s.stop() == 0
    p = start_primary(a, secret, port)  # daemon starts keep a user's snapshot
    assert p.stop() == 0
    listed = ok("snapshot", "list", a)
    assert re.search(rf"^\s*{snap}\s+user\s+before-upgrade", listed, re.M), listed
    assert exported(tmp_path, a, str(snap), "vol0")[:4 << 20] == b"\x31" * (4 << 20)


def test_a_resync_base_deleted_by_hand_forces_a_full_sync_never_a_silent_divergence(tmp_path):
    """Bug 1: the link-down snapshot deleted (now only with --force), then a
    restart: the primary says so and resyncs in full; the images match."""
    a, b, secret, port = parted_pair(tmp_path, "write -P 0x66 2M 256K")  # tracked by the link-down snapshot only
    listed = ok("snapshot", "list", a)
    m = re.search(r"^\s*(\d+)\s+internal\s+link-down", listed, re.M)
    assert m, listed
    err, hint = refused("snapshot", "delete", a, m.group(1))
    assert "internal" in err and "--force" in hint
    ok("snapshot", "delete", "--force", a, m.group(1))
    s = start_secondary(b, secret, port)
    p = start_primary(a, secret, port)
    try:
        st = p.wait_for(converged, timeout_s=30, what="the resync without its base")
        assert st["last_resync"]["kind"] == "full", st["last_resync"]
        assert "was deleted" in p.log()
        assert_identical(p, s)
    finally:
        assert p.stop() == 0 and s.stop() == 0


def test_a_user_snapshot_of_a_stopped_secondary_survives_its_daemon(tmp_path):
    a, b, secret = synced_pair(tmp_path)
    out = ok("snapshot", "create", b, "--label", "before-upgrade")
    snap = re.match(r"snapshot (\d+)", out).group(1)
    port = free_port()
    s = start_secondary(b, secret, port)
    p = start_primary(a, secret, port)
    try:
        qemu_io(p.uri("vol0"), "write -P 0x42 0 1M")  # a resync round and live writes on the secondary
        p.wait_for(converged, what="mirroring")
        assert_identical(p, s)
    finally:
        assert p.stop() == 0 and s.stop() == 0
    listed = ok("snapshot", "list", b)
    assert re.search(rf"^\s*{snap}\s+user\s+before-upgrade", listed, re.M), listed
    assert exported(tmp_path, b, snap, "vol0")[:4 << 20] == b"\x31" * (4 << 20)
