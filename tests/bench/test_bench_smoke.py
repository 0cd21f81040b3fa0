"""The storage benchmark still runs: `bench/storage_bench.py --smoke` (tiny
sizes, seconds) exits 0 and prints every result line. No timing is asserted:
benchmarks are scripts, their numbers live in docs/BENCHMARKS.md."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "bench", "storage_bench.py")

NUM = r"-?[0-9]+(\.[0-9]+)?"
EXPECTED = [
    r"machine\.cpu: .+",
    r"machine\.bench_fs: .+",
    rf"storage\.snapshot\.8x\w+\.(pause_ns|gate_closed|call)_(p50|p99|max): {NUM} ms",
    rf"storage\.snapshot\.8x\w+\.delete_p50: {NUM} ms",
    rf"storage\.snapshot\.ratio_\w+\.gate_closed_p99: {NUM} x",
    rf"storage\.write64k\.qd(32|1)\.(no_snapshot|first_write|rewrite): {NUM} MB/s",
    rf"storage\.write64k\.qd(32|1)\.(first_write|rewrite)_ratio: {NUM} x",
    rf"storage\.write64k\.qd(32|1)\.(cow_floor|reuse_floor): {NUM} MB/s",
    rf"storage\.write64k\.qd(32|1)\.(reuse_floor_ratio|first_write_to_reuse_floor|spare_covered): {NUM} x",
    rf"storage\.diff\.\w+pct\.open_plus_diff: {NUM} ms",
    rf"storage\.diff\.\w+pct\.peak_mem_above_baseline: {NUM} MiB",
    rf"storage\.elapsed: {NUM} s",
]


def test_storage_bench_smoke(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    # Every stdout line is a result line, `name: value [unit]`.
    bad = [ln for ln in lines if not re.fullmatch(r"[A-Za-z0-9_.\[\]-]+: .+", ln)]
    assert not bad, bad
    for pattern in EXPECTED:
        assert any(re.fullmatch(pattern, ln) for ln in lines), f"no line matches {pattern!r}:\n{proc.stdout}"
    for qd in (32, 1):
        names = {ln.split(":")[0] for ln in lines}
        for case in ("no_snapshot", "first_write", "rewrite"):
            assert f"storage.write64k.qd{qd}.{case}" in names
    # The temporary data is removed at the end; the given --dir itself stays.
    assert os.listdir(tmp_path) == []
