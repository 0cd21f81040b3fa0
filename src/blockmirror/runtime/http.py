"""`--http HOST:PORT`: GET /status (the control socket's JSON) and GET
/metrics (Prometheus text exposition format 0.0.4). A minimal HTTP/1.1
server: one request per connection, bounded request size and time."""

from __future__ import annotations

import asyncio
import json
import logging

log = logging.getLogger("blockmirror.http")

REQUEST_BYTES_MAX = 8192
STATES = ("initial-sync", "mirroring", "disconnected", "resyncing")


class HttpServer:
    def __init__(self, status):
        self._status = status  # async () -> dict
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
                body = json.dumps(await self._status(), indent=1, sort_keys=True).encode() + b"\n"
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


def metrics_text(st: dict) -> str:
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        out.append(f"# HELP blockmirror_{name} {help_text}")
        out.append(f"# TYPE blockmirror_{name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
            out.append(f"blockmirror_{name}{{{lab}}} {_num(value)}" if lab else f"blockmirror_{name} {_num(value)}")

    role = st.get("role", "?")
    metric("info", "gauge", "Role of this node (value 1).", [({"role": role, "pair": (st.get("pair") or {}).get("name", "")}, 1)])
    metric("state", "gauge", "1 for the current replication state.",
           [({"state": s}, 1 if st.get("state") == s else 0) for s in STATES])
    metric("peer_connected", "gauge", "1 while the replication link is up.", [({}, 1 if st.get("peer_connected") else 0)])
    metric("state_seconds", "gauge", "Seconds in the current state.", [({}, st.get("state_seconds", 0))])
    last = st.get("last_resync") or {}
    metric("last_resync_chunks", "gauge", "Chunks sent by the last resync (all its rounds).", [({}, last.get("chunks", 0))])
    metric("last_resync_bytes", "gauge", "Data bytes sent by the last resync (all its rounds).", [({}, last.get("bytes", 0))])
    metric("last_resync_seconds", "gauge", "Duration of the last resync, from reconnect to mirroring.", [({}, last.get("seconds", 0))])
    snaps = st.get("snapshots") or []
    metric("snapshots", "gauge", "Snapshots held on this node.", [({}, len(snaps))])
    metric("snapshot_space_bytes", "gauge", "Preserved data held by snapshots.",
           [({}, sum(s.get("space_bytes", 0) for s in snaps))])
    metric("volume_size_bytes", "gauge", "Size of each volume.",
           [({"volume": v["name"]}, v["size"]) for v in st.get("volumes", [])])
    link = st.get("link") or {}
    metric("link_sent_bytes", "gauge", "Bytes sent on the current link.", [({}, link.get("bytes_sent", 0))])
    metric("link_received_bytes", "gauge", "Bytes received on the current link.", [({}, link.get("bytes_received", 0))])
    if role == "primary":
        metric("seq", "gauge", "Last sequence number given to a mirrored write.", [({}, st.get("seq", 0))])
        metric("acked_seq", "gauge", "Last sequence number the secondary acknowledged.", [({}, st.get("acked_seq", 0))])
        metric("lag_writes", "gauge", "Writes sent but not yet acknowledged.", [({}, st.get("lag_writes", 0))])
        metric("inflight_bytes", "gauge", "Bytes sent but not yet acknowledged.", [({}, st.get("inflight_bytes", 0))])
        metric("waiting_writes", "gauge", "Host writes waiting for window space.", [({}, st.get("waiting_writes", 0))])
        metric("link_failures_total", "counter", "Link failures since start.", [({}, st.get("link_failures", 0))])
        metric("write_pause_seconds", "gauge", "Host write pause of the last snapshot.",
               [({}, st.get("write_pause_ms", 0) / 1000)])
    else:
        metric("seq", "gauge", "Last applied sequence number.", [({}, st.get("seq", 0))])
        metric("consistent", "gauge", "1 when the volumes hold a consistent image.", [({}, 1 if st.get("consistent") else 0)])
        metric("journal_bytes", "gauge", "Bytes in the redo journal.", [({}, st.get("journal_bytes", 0))])
    return "\n".join(out) + "\n"


def _num(value) -> str:
    value = float(value)
    if value.is_integer() and abs(value) < 2 ** 53:
        return str(int(value))
    return repr(value)
