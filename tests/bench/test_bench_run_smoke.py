"""`make bench` cannot rot: `bench/run.py --smoke` (tiny sizes, real
daemons, rsync, nbdcopy, nbdkit, the fault proxy, resyncs interrupted and
resumed, verify, a checksum initial sync; seconds) exits 0, prints every benchmark's result lines, renders
its docs sections into a scratch file and removes its temporary data. No
timing is asserted: benchmarks are scripts, their numbers live in
docs/BENCHMARKS.md."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "bench", "run.py")

NUM = r"-?[0-9]+(\.[0-9]+)?"
EXPECTED = {
    "machine": [r"machine\.cpu: .+", r"machine\.bench_fs: .+", r"bench\.mode: smoke"],
    "1 resync vs rsync": [
        rf"resync\.vs_rsync\.\w+_(1|10)pct\.(bm_seconds|bm_wall_seconds|rsync_seconds): {NUM} s",
        rf"resync\.vs_rsync\.\w+_(1|10)pct\.(bm_wire_bytes|rsync_sent_bytes|changed_bytes): {NUM} B",
        rf"resync\.vs_rsync\.\w+_1pct\.speedup: {NUM} x",
        rf"resync\.vs_rsync\.\w+_10pct\.bm_wire_overhead: {NUM} x"],
    "2 resync vs size": [rf"resync\.size\.\w+\.seconds: {NUM} s", rf"resync\.size\.ratio_\w+: {NUM} x"],
    "3 resync vs raw copy": [rf"resync\.vs_raw\.\w+pct\.(resync_mb_s|raw_copy_mb_s): {NUM} MB/s",
                             rf"resync\.vs_raw\.\w+_10pct\.ratio: {NUM} x",
                             rf"resync\.vs_raw\.\w+pct\.atomic_copy_mb_s: {NUM} MB/s",
                             rf"resync\.vs_raw\.\w+pct\.(atomic_ratio|resync_to_atomic): {NUM} x",
                             rf"resync\.vs_raw\.\w+pct\.floor_mb_s: {NUM} MB/s",
                             rf"resync\.vs_raw\.\w+pct\.(floor_ratio|resync_to_floor): {NUM} x",
                             rf"resync\.vs_raw\.\w+pct\.(primary|secondary)_cpu_s_per_gib: {NUM} CPU-s/GiB"],
    "4 nbdcopy": [rf"nbd\.write\.(async|sync|local|standalone|nbdkit)_mb_s: {NUM} MB/s",
                  rf"nbd\.write\.(async|sync)_to_local: {NUM} x",
                  rf"nbd\.cpu\.(async|sync|local)\.(primary|nbdcopy|total)_s_per_gib: {NUM} CPU-s/GiB",
                  rf"nbd\.cpu\.(async|sync)\.bound_to_local: {NUM} x",
                  rf"nbd\.write\.floor_(local|mirror)_mb_s: {NUM} MB/s",
                  rf"nbd\.write\.(floor_mirror_to_local|floor_mirror_to_floor_local|async_to_floor_mirror): {NUM} x"],
    "5 FUA latency": [rf"nbd\.fua4k\.(sync|local)\.(p50|p99)_us: {NUM} us", rf"nbd\.fua4k\.sync_to_local_p99: {NUM} x"],
    "6 write pause": [rf"pause\.8x\w+\.write_pause_(p50|p99|max): {NUM} ms",
                      rf"pause\.8x\w+\.host_max_latency_p99: {NUM} ms", rf"pause\.ratio_\w+_p99: {NUM} x"],
    "7 outage writes": [rf"outage\.write64k\.(mirroring|first|rewrite)_mb_s: {NUM} MB/s",
                        rf"outage\.write64k\.(first|rewrite)_to_mirroring: {NUM} x"],
    "8 peak memory": [rf"memory\.\w+\.(primary|secondary)_peak_mib: {NUM} MiB"],
    "9 resumed resync": [rf"resume\.(uninterrupted|cut|kill9_\w+)\.(changed|data|wire)_bytes: {NUM} B",
                         rf"resume\.(cut|kill9_secondary|kill9_primary)\.data_ratio: {NUM} x",
                         rf"resume\.(cut|kill9_secondary|kill9_primary)\.seconds_to_uninterrupted: {NUM} x",
                         rf"resume\.worst_data_ratio: {NUM} x"],
    "10 verify": [rf"verify\.\w+\.(seconds|wall_seconds|rated\.seconds|repair\.seconds): {NUM} s",
                  rf"verify\.\w+\.(mb_s|rated\.limit_mb_s|rated\.mb_s): {NUM} MB/s",
                  rf"verify\.\w+\.(link_bytes|digest_bytes|(primary|secondary)_read_bytes|repair\.resync_bytes): {NUM} B",
                  rf"verify\.\w+\.(link_ratio|link_to_digests|(primary|secondary)_(read|rchar)_ratio): {NUM} x",
                  rf"verify\.\w+\.(rated\.to_limit|repair\.resync_to_damaged): {NUM} x",
                  rf"verify\.\w+\.repair\.(damaged|out_of_sync|repaired)_chunks: {NUM}"],
    "11 checksum sync": [rf"checksum\.\w+pct\.(checksum|full)\.(data|wire)_bytes: {NUM} B",
                         rf"checksum\.\w+pct\.(checksum|full)\.(seconds|wall_seconds): {NUM} s",
                         rf"checksum\.\w+pct\.checksum\.compare_seconds: {NUM} s",
                         rf"checksum\.\w+pct\.checksum\.compare_mb_s: {NUM} MB/s",
                         rf"checksum\.\w+pct\.checksum\.(data_ratio|wire_ratio): {NUM} x",
                         rf"checksum\.\w+pct\.full_to_checksum_(wire|seconds): {NUM} x",
                         rf"checksum\.\w+pct\.(changed_bytes|digest_bytes): {NUM} B"],
    "end": [rf"bench\.elapsed: {NUM} s"],
}


def test_bench_run_smoke(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    data = tmp_path / "data"
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--dir", str(data), "--docs-to", str(doc)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    bad = [ln for ln in lines if not re.fullmatch(r"[A-Za-z0-9_.\[\]-]+: .+", ln)]
    assert not bad, bad  # every stdout line is a result line, `name: value [unit]`
    for bench, patterns in EXPECTED.items():
        for pattern in patterns:
            assert any(re.fullmatch(pattern, ln) for ln in lines), f"{bench}: no line matches {pattern!r}"
    names = {ln.split(":")[0] for ln in lines}
    for case in ("async", "sync", "local", "standalone", "nbdkit"):
        assert f"nbd.write.{case}_mb_s" in names
    text = doc.read_text()
    for heading in ("## Machine", "## How to reproduce", "## Mirroring", "### 1. Resync vs rsync",
                    "### 6. Write pause at link failure", "### 8. Peak memory of the daemons",
                    "### 9. Resync resumed after an interruption",
                    "### 10. Online verify", "### 11. Checksum initial sync of a pre-seeded secondary",
                    "| `--repair`: damaged / found / repaired chunks |", "| wall s (comparing) |",
                    "| case | primary | secondary | nbdcopy | total CPU-s/GiB", "| bare mirror (no NBD) |",
                    "| bare resync / raw |"):
        assert heading in text
    assert os.listdir(data) == []  # the temporary data is removed; --dir itself stays
