"""A busy --http port stops either daemon with one `Error:` line, a hint and
exit 1, and leaves its node startable: a second start fails the same way,
not on a node still held by the first."""

import socket
import subprocess
import sys

import pytest

from blockmirror.testing.nodes import make_nodes, primary_args, secondary_args


def start(role: str, node_dir: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockmirror", role, node_dir, *args], capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("role", ["primary", "secondary"])
def test_busy_http_port_is_a_user_error(tmp_path, role):
    p, s, secret = make_nodes(tmp_path)
    node_dir, args = (p, primary_args(secret, ("127.0.0.1", 1))) if role == "primary" else (s, secondary_args(secret))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        first = start(role, node_dir, *args, "--http", f"127.0.0.1:{port}")
        second = start(role, node_dir, *args, "--http", f"127.0.0.1:{port}")
    for proc in (first, second):
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(("Error:", "Try:"))]
        assert proc.returncode == 1
        assert errors == [f"Error: cannot serve HTTP on 127.0.0.1:{port}: the address is already in use",
                          "Try: choose another port with --http HOST:PORT (port 0 picks a free one), or stop the "
                          "process that holds it (ss -ltnp)"], proc.stderr
