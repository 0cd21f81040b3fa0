"""Support for the test suite, the benchmarks and `make demo`: real
`blockmirror` processes and what drives them. Nothing in here is used by the
daemons.

- `daemon`: one `blockmirror primary|secondary` process (readiness lines,
  status over the control socket, signals, restarts, logs) and the status
  predicates the callers wait for;
- `nodes`: initialised node directories, the secret file, the link flags;
- `pair`: a secondary, an optional fault proxy and a primary dialling it;
- `proxy`: the fault proxy as a separate process, with the client API of
  the in-process `blockmirror.faultproxy.FaultProxyThread`;
- `interrupt`: a resync round interrupted part-way (link cut, kill -9 of
  either daemon) and resumed, and its bytes counted per attempt;
- `host`: a host writing through NBD (python libnbd);
- `tools`: external programs (qemu-io, qemu-img, nbdcopy) and loopback ports;
- `procstat`: memory and CPU readings of a process from /proc.

Tests and benchmarks differ only in parameters (`daemon.Patience`), never
in the classes they use.
"""
