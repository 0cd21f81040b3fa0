"""The diagnostics in bench/diagnostics/ (run by hand, never by `make
bench`) still run: each answers --help, and each that needs no py-spy
prints its report on tiny sizes (seconds). No number is asserted."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIAGNOSTICS = os.path.join(ROOT, "bench", "diagnostics")
NUM = r"[0-9]+(\.[0-9]+)?"


def diagnostic(script: str, *args: str, timeout_s: float = 120) -> str:
    proc = subprocess.run([sys.executable, os.path.join(DIAGNOSTICS, script), *args], capture_output=True,
                          text=True, timeout=timeout_s, cwd=ROOT)
    assert proc.returncode == 0, f"{script} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.parametrize("script", ["nbd_throughput.py", "profile_daemons.py", "cpu_per_byte.py",
                                    "resync_threads.py"])
def test_each_diagnostic_explains_its_options(script):
    out = diagnostic(script, "--help")
    assert out.startswith("usage: ") and "--help" in out


def test_nbd_throughput_compares_the_primary_with_nbdkit(tmp_path):
    out = diagnostic("nbd_throughput.py", "--smoke", "--dir", str(tmp_path))
    for row in ("write, default (multi-conn)", "read, default (multi-conn)", "write, 1 connection",
                "read, 1 connection"):
        assert re.search(rf"^{re.escape(row)} +{NUM} +{NUM} +{NUM}$", out, re.M), out
    assert os.listdir(tmp_path) == []  # its node and images are removed


def test_cpu_per_byte_reports_each_case():
    out = diagnostic("cpu_per_byte.py", "--runs", "1", "--size-mib", "16", "--cases", "async,local")
    for case in ("async", "local"):
        assert re.search(rf"^{case} +({NUM} +){{11}}{NUM}$", out, re.M), out  # its 12 columns
    assert re.search(rf"^async / local MB/s ratio \(median of per-run ratios\): {NUM}%$", out, re.M), out


def test_resync_threads_splits_a_resync_per_thread(tmp_path):
    out = diagnostic("resync_threads.py", "--size-gib", "0.0625", "--frac", "0.25", "--runs", "1",
                     "--sample-hz", "200", "--dir", str(tmp_path))
    assert re.search(r"^resync of 0\.016 GiB changed \(256 chunks\), 1 runs, medians$", out, re.M), out
    for proc in ("primary", "secondary"):
        # Thread names come from the daemons' Python threads (the script's sitecustomize hook).
        assert re.search(rf"^  {proc} +(pri|sec)-engine_0 ", out, re.M), out
        assert re.search(rf"^  {proc} +\(process\) ", out, re.M), out
    assert "thread states during the resync" in out
    assert os.listdir(tmp_path) == []
