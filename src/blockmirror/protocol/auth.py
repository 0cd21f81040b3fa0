"""Mutual authentication with a shared pair secret: HMAC-SHA256 over both Hellos.

Each proof is HMAC(secret, LABEL || prover role || transcript), where the
transcript holds both Hello payloads (both roles, node and pair ids, both
fresh nonces). A proof is therefore good for one connection only (replay
fails: the peer's nonce is new) and one direction only (reflection fails: the
prover's role is inside the MAC). The secret itself never leaves the node.
This proves knowledge of the secret; it does not encrypt or bind later
frames, which is TLS's job if the link is hostile.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable

from blockmirror.errors import ConfigError
from blockmirror.protocol.handshake import AUTH_MAC_BYTES, NONCE_BYTES, Hello, Role
from blockmirror.protocol.messages import encode_payload

AUTH_LABEL = b"blockmirror-auth-v1\x00"
SECRET_BYTES_MIN = 16

# Anything like os.urandom or random.Random(seed).randbytes.
RandBytes = Callable[[int], bytes]

_LEN = struct.Struct(">I")


def check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes):
        raise ConfigError("the pair secret must be bytes")
    if len(secret) < SECRET_BYTES_MIN:
        raise ConfigError(f"the pair secret is {len(secret)} bytes; at least {SECRET_BYTES_MIN} are needed",
                          hint="generate one with: head -c 32 /dev/urandom | base64")


def make_nonce(randbytes: RandBytes) -> bytes:
    nonce = randbytes(NONCE_BYTES)
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise TypeError(f"randbytes({NONCE_BYTES}) must return {NONCE_BYTES} bytes")
    return nonce


def transcript(hello_primary: Hello, hello_secondary: Hello) -> bytes:
    """Both Hellos, length-prefixed so no two transcripts can be confused."""
    assert hello_primary.role is Role.PRIMARY and hello_secondary.role is Role.SECONDARY
    out = bytearray()
    for hello in (hello_primary, hello_secondary):
        payload = encode_payload(hello)
        out += _LEN.pack(len(payload)) + payload
    return bytes(out)


def compute_proof(secret: bytes, prover: Role, transcript_bytes: bytes) -> bytes:
    mac = hmac.new(secret, AUTH_LABEL + bytes([prover]) + transcript_bytes, hashlib.sha256).digest()
    assert len(mac) == AUTH_MAC_BYTES
    return mac


def verify_proof(secret: bytes, prover: Role, transcript_bytes: bytes, mac: bytes) -> bool:
    """Constant-time check, so timing tells an attacker nothing about the MAC."""
    return hmac.compare_digest(compute_proof(secret, prover, transcript_bytes), mac)
