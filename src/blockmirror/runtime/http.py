"""`--http HOST:PORT`: GET /status (the control socket's JSON) and GET
/metrics (Prometheus text exposition format 0.0.4). A minimal HTTP/1.1
server: one request per connection, bounded request size and time."""

from __future__ import annotations

import asyncio
import json
import logging

from blockmirror.status import State, Status

log = logging.getLogger("blockmirror.http")

REQUEST_BYTES_MAX = 8192
STATES = (State.INITIAL_SYNC, State.MIRRORING, State.DISCONNECTED, State.RESYNCING)


class HttpServer:
    def __init__(self, status):
        self._status = status  # async () -> Status
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        name = self._server.sockets[0].getsockname()
        return name[0], name[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            if len(head) > REQUEST_BYTES_MAX:
                raise ValueError("request too large")
            method, target, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                await _reply(writer, 405, "text/plain", b"only GET\n", method == "HEAD")
            elif path == "/status":
                body = json.dumps((await self._status()).as_dict(), indent=1, sort_keys=True).encode() + b"\n"
                await _reply(writer, 200, "application/json", body, method == "HEAD")
            elif path == "/metrics":
                body = metrics_text(await self._status()).encode()
                await _reply(writer, 200, "text/plain; version=0.0.4; charset=utf-8", body, method == "HEAD")
            else:
                await _reply(writer, 404, "text/plain", b"try /status or /metrics\n", method == "HEAD")
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                ConnectionError):
            pass
        except Exception:  # noqa: BLE001 - a scrape must never stop the daemon
            log.exception("http request failed")
        finally:
            writer.close()


async def _reply(writer, code: int, ctype: str, body: bytes, head_only: bool) -> None:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[code]
    writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                 f"Connection: close\r\n\r\n".encode())
    if not head_only:
        writer.write(body)
    await writer.drain()


def metrics_text(st: Status) -> str:
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        out.append(f"# HELP blockmirror_{name} {help_text}")
        out.append(f"# TYPE blockmirror_{name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
            out.append(f"blockmirror_{name}{{{lab}}} {_num(value)}" if lab else f"blockmirror_{name} {_num(value)}")

    metric("info", "gauge", "Role of this node (value 1).",
           [({"role": st.role, "pair": st.pair.name if st.pair else ""}, 1)])
    metric("state", "gauge", "1 for the current replication state.",
           [({"state": s.value}, 1 if st.state == s else 0) for s in STATES])
    metric("peer_connected", "gauge", "1 while the replication link is up.", [({}, 1 if st.peer_connected else 0)])
    metric("state_seconds", "gauge", "Seconds in the current state.", [({}, st.state_seconds)])
    last = st.last_resync
    metric("last_resync_chunks", "gauge", "Chunks sent by the last resync (all its rounds).", [({}, last.chunks)])
    metric("last_resync_bytes", "gauge", "Data bytes sent by the last resync (all its rounds).", [({}, last.bytes)])
    metric("last_resync_seconds", "gauge", "Duration of the last resync, from reconnect to mirroring.",
           [({}, last.seconds)])
    metric("snapshots", "gauge", "Snapshots held on this node.", [({}, len(st.snapshots))])
    metric("snapshot_space_bytes", "gauge", "Preserved data held by snapshots.",
           [({}, sum(s.space_bytes for s in st.snapshots))])
    metric("volume_size_bytes", "gauge", "Size of each volume.", [({"volume": v.name}, v.size) for v in st.volumes])
    link = st.link
    metric("link_sent_bytes", "gauge", "Bytes sent on the current link.", [({}, link.bytes_sent if link else 0)])
    metric("link_received_bytes", "gauge", "Bytes received on the current link.",
           [({}, link.bytes_received if link else 0)])
    if st.primary is not None:
        p = st.primary
        metric("seq", "gauge", "Last sequence number given to a mirrored write.", [({}, st.seq)])
        metric("acked_seq", "gauge", "Last sequence number the secondary acknowledged.", [({}, p.acked_seq)])
        metric("lag_writes", "gauge", "Writes sent but not yet acknowledged.", [({}, p.lag_writes)])
        metric("inflight_bytes", "gauge", "Bytes sent but not yet acknowledged.", [({}, p.inflight_bytes)])
        metric("waiting_writes", "gauge", "Host writes waiting for window space.", [({}, p.waiting_writes)])
        metric("link_failures_total", "counter", "Link failures since start.", [({}, p.link_failures)])
        metric("write_pause_seconds", "gauge", "Host write pause of the last snapshot.",
               [({}, p.write_pause_ms / 1000)])
        metric("out_of_sync_bytes", "gauge", "Bytes the secondary lacks: what a resync would send now, or what "
               "is left of the one under way, or the writes in flight.", [({}, p.out_of_sync_bytes)])
        metric("out_of_sync_chunks", "gauge", "Chunks the secondary lacks (as out_of_sync_bytes).",
               [({}, p.out_of_sync_chunks)])
        metric("lag_seconds", "gauge", "Age of the oldest write the secondary does not hold (0: none).",
               [({}, p.lag_seconds)])
        metric("unacked_bytes", "gauge", "Bytes of mirrored writes sent and not yet acknowledged.",
               [({}, p.unacked_bytes)])
        metric("rpo_exceeded", "gauge", "1 while lag_seconds is past --rpo-warn.", [({}, 1 if p.rpo_exceeded else 0)])
        metric("verify_chunks_done", "gauge", "Chunks the verify under way has compared (0: none under way).",
               [({}, p.verify.chunks_done if p.verify else 0)])
        if p.last_verify is not None:
            metric("last_verify_out_of_sync_chunks", "gauge", "Chunks the last verify found different.",
                   [({}, p.last_verify.out_of_sync_chunks)])
    metric("resync_bytes_total", "counter", "Data bytes of resync rounds since the daemon started (sent by the "
           "primary, received by the secondary; rounds cut short too).", [({}, st.totals.resync_bytes)])
    if st.secondary is not None:
        metric("seq", "gauge", "Last applied sequence number.", [({}, st.seq)])
        metric("consistent", "gauge", "1 when the volumes hold a consistent image.",
               [({}, 1 if st.secondary.consistent else 0)])
        metric("journal_bytes", "gauge", "Bytes in the redo journal.", [({}, st.secondary.journal_bytes)])
    return "\n".join(out) + "\n"


def _num(value) -> str:
    value = float(value)
    if value.is_integer() and abs(value) < 2 ** 53:
        return str(int(value))
    return repr(value)
