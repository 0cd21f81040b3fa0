"""`blockmirror verify` against real daemons: bytes written straight into the
secondary's image files (a careless admin, a faulty disk) are found exactly,
with host writes going on; `--repair` sends exactly them; an identical pair
costs the link well under 1% of its bytes; errors exit 2."""

import json
import subprocess
import sys

from blockmirror.testing.host import HotAreaWriter
from blockmirror.testing.nodes import CHUNK, VOLUMES, damage_chunks, write_pattern
from blockmirror.testing.tools import assert_identical, qemu_io, verify

# Three chunks of two volumes, written into the stopped secondary's image files.
DAMAGE = [("vol0", 3 * CHUNK), ("vol0", 200 * CHUNK), ("vol1", 10 * CHUNK)]


def damage_secondary(pair) -> None:
    """Stop the secondary, overwrite the DAMAGE chunks in its image files
    (behind the storage layer's back), start it again."""
    assert pair.secondary.stop() == 0
    damage_chunks(pair.s_dir, DAMAGE)
    pair.restore()
    pair.wait_converged()


def prefill(p_dir: str) -> None:
    """Data the first (full) sync copies: not in the secondary's journal, so
    no replay at its restart rewrites the damaged chunks."""
    write_pattern(p_dir, b"verify vol0", VOLUMES["vol0"], "vol0")
    write_pattern(p_dir, b"verify vol1", VOLUMES["vol1"], "vol1")


def damaged_pair(new_pair):
    """A converged pair whose secondary then got the DAMAGE behind its back."""
    pair = new_pair(prefill=prefill)
    pair.start_secondary()
    pair.start_primary()
    pair.wait_converged()
    damage_secondary(pair)
    return pair


def test_verify_finds_exactly_the_damaged_chunks_and_repair_sends_them(new_pair):
    pair = damaged_pair(new_pair)
    p = pair.primary
    # Host writes go on during the verify, away from the damaged chunks: none is a false difference.
    writer = HotAreaWriter(p.uri("vol1"), area_bytes=512 << 10, seed=5)  # vol1's first 8 chunks
    try:
        writer.wait_writes(10)
        proc = verify(pair.p_dir, "--json")
        writer.wait_writes(10)
    finally:
        writer.stop()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    last = json.loads(proc.stdout)
    assert last["result"] == "out-of-sync" and last["out_of_sync_chunks"] == 3
    assert last["chunks"] == sum(-(-size // CHUNK) for size in VOLUMES.values())
    assert [(e["volume"], e["offset"], e["length"]) for e in last["out_of_sync"]] == \
        [(name, off, CHUNK) for name, off in DAMAGE]
    assert p.status()["last_verify"] == last
    # The plain text names the same runs.
    proc = verify(pair.p_dir)
    assert proc.returncode == 1
    for name, off in DAMAGE:
        assert f"{name} offset {off} length {CHUNK}" in proc.stdout, proc.stdout
    # Repair: exactly those chunks go, in one atomic round.
    before = p.status()["totals"]["resync_bytes"]
    proc = verify(pair.p_dir, "--repair", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = json.loads(proc.stdout)
    assert last["result"] == "repaired" and last["repaired_chunks"] == 3 == last["out_of_sync_chunks"]
    assert p.status()["totals"]["resync_bytes"] - before == 3 * CHUNK
    assert "repairing 3 chunks that differ" in p.log()
    proc = verify(pair.p_dir)
    assert proc.returncode == 0 and "identical" in proc.stdout, proc.stdout + proc.stderr
    pair.wait_converged()
    assert_identical(p, pair.secondary)


def test_verify_of_an_identical_pair_sends_no_chunk_data(pair):
    p = pair.primary
    qemu_io(p.uri("vol0"), "write -P 0x41 0 16M")
    st = pair.wait_converged()
    before = pair.proxy.status()["bytes_forwarded"]
    proc = verify(pair.p_dir, "--volume", "vol0", "--rate", "64MiB")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "identical" in proc.stdout
    moved = pair.proxy.status()["bytes_forwarded"] - before
    assert moved < VOLUMES["vol0"] // 100, f"{moved} bytes on the link to verify {VOLUMES['vol0']}"
    last = p.status()["last_verify"]
    assert last["volumes"] == ["vol0"] and last["chunks"] == VOLUMES["vol0"] // CHUNK
    assert p.status()["generation"] == st["generation"], "a verify that finds nothing changes nothing"


def test_verify_errors_exit_2_with_one_error_line(pair, tmp_path):
    pair.wait_converged()
    cases = [
        (verify(pair.s_dir), "does not start a verify"),
        (verify(pair.p_dir, "--volume", "nope"), "no volume 'nope'"),
        (verify(str(tmp_path / "missing")), "does not exist"),
        (verify(pair.p_dir, "--rate", "fast"), "not a rate"),
    ]
    for proc, text in cases:
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error: ")]
        assert len(errors) == 1 and text in errors[0], proc.stderr
        assert any(ln.startswith("Try: ") for ln in proc.stderr.splitlines()), proc.stderr


def test_a_verify_cut_by_a_link_failure_goes_on_when_the_link_returns(new_pair):
    pair = damaged_pair(new_pair)
    p = pair.primary
    proc = subprocess.Popen([sys.executable, "-m", "blockmirror", "verify", pair.p_dir, "--rate", "4MiB", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        st = p.wait_for(lambda st: st["verify"] is not None and st["verify"]["chunks_done"] > 64, timeout_s=20,
                        what="a verify under way")
        pair.proxy.cut()
        st = p.wait_for(lambda st: st["phase"] == "disconnected", timeout_s=10, what="link-down detection")
        assert st["verify"]["state"] == "paused"
        done = st["verify"]["chunks_done"]
        pair.proxy.heal()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    last = json.loads(out)
    # It went on from where it was: every chunk compared once, the damage found exactly, nothing more.
    assert last["chunks"] == sum(-(-size // CHUNK) for size in VOLUMES.values()) and done < last["chunks"]
    assert [(e["volume"], e["offset"]) for e in last["out_of_sync"]] == DAMAGE
    assert "link down" in p.log()
