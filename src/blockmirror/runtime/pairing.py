"""The pair a daemon belongs to: its shared secret and its identity.

Both nodes must present the same pair UUID and name in the handshake. The
UUID is derived from the pair name and the secret, so two nodes started with
the same `--pair NAME` and secret file agree without any other config:

    pair_uuid = uuid5(PAIR_NAMESPACE, hex(HMAC-SHA256(secret, "blockmirror-pair-v1\\0" + name)))

An HMAC, so the UUID (which travels in clear in the Hello) reveals nothing
about the secret. The first completed handshake stores the pair name, UUID
and the node's role in the node's records (engine/roles.py); later starts use
the stored UUID (so the secret can be rotated on both nodes) and refuse
another pair name, or the other role (`promote` and `demote` change it). A
start that fails before a handshake leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import uuid
from dataclasses import dataclass

from blockmirror.engine.records import RecordStore
from blockmirror.engine.roles import check_role
from blockmirror.errors import ConfigError, NodeError
from blockmirror.protocol.auth import SECRET_BYTES_MIN

log = logging.getLogger("blockmirror.pairing")

PAIR_NAMESPACE = uuid.UUID("5b1e3c52-5f0c-4f4b-9a43-6d1a0f6b1c7e")
PAIR_NAME_DEFAULT = "default"
SECRET_FILE_BYTES_MAX = 64 << 10


@dataclass(frozen=True)
class PairIdentity:
    name: str
    uuid: uuid.UUID


def _create_hint(path: str, instead: bool = False) -> str:
    """How to make a new secret file at `path`, a regular file path: never
    a directory, a device or a big file (the command overwrites it).
    `instead`: `path` is not the one given, say to use it."""
    use = f"use --secret-file {path}; " if instead else ""
    return (f"{use}create it with: head -c 32 /dev/urandom | base64 > {path}; chmod 600 {path} "
            f"(and copy the same file to the other node)")


def _elsewhere_hint(path: str) -> str:
    """The hint for a path that must not be overwritten (a device, a FIFO, a big file)."""
    other = "/etc/blockmirror/secret"
    if os.path.abspath(path) == other:
        other = "/etc/blockmirror/pair.secret"
    return _create_hint(other, instead=True)


def _directory_hint(path: str) -> str:
    return _create_hint(os.path.join(path, "pair.secret"), instead=True)


def read_secret(path: str) -> bytes:
    """The pair secret from a file; surrounding whitespace (a trailing
    newline) is not part of it."""
    hint = _create_hint(path)
    try:
        st = os.stat(path)  # before open(): opening a FIFO would block; a device is never a secret file
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"secret file {path} is a directory", hint=_directory_hint(path))
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"secret file {path} is not a regular file (a device, FIFO or socket?)",
                              hint=_elsewhere_hint(path))
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"secret file {path} is not a regular file", hint=_elsewhere_hint(path))
            data = f.read(SECRET_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        raise ConfigError(f"secret file {path} does not exist", hint=hint) from None
    except PermissionError:
        raise ConfigError(f"secret file {path} is not readable (permission denied)",
                          hint="run the daemon as a user that can read it, or fix its owner/mode") from None
    except IsADirectoryError:
        raise ConfigError(f"secret file {path} is a directory", hint=_directory_hint(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror or exc}", hint=hint) from None
    if len(data) > SECRET_FILE_BYTES_MAX:
        raise ConfigError(f"secret file {path} is larger than {SECRET_FILE_BYTES_MAX} bytes: not a secret file?",
                          hint=_elsewhere_hint(path))
    secret = data.strip()
    if not secret:
        raise ConfigError(f"secret file {path} is empty", hint=hint)
    if len(secret) < SECRET_BYTES_MIN:
        raise ConfigError(f"secret in {path} is {len(secret)} bytes; at least {SECRET_BYTES_MIN} are needed",
                          hint=hint)
    if st.st_mode & 0o077:
        log.warning("secret file %s is readable by other users (mode %o); chmod 600 it", path,
                    stat.S_IMODE(st.st_mode))
    return secret


def derive_pair_uuid(name: str, secret: bytes) -> uuid.UUID:
    mac = hmac.new(secret, b"blockmirror-pair-v1\0" + name.encode("utf-8"), hashlib.sha256).hexdigest()
    return uuid.uuid5(PAIR_NAMESPACE, mac)


def check_pair_name(name: str) -> str:
    if not name or len(name.encode("utf-8")) > 255 or any(ord(c) < 32 for c in name):
        raise ConfigError(f"bad pair name {name!r}", hint="use a short printable name, e.g. --pair db-mirror")
    return name


def check_pair(node, role: str, name: str, secret: bytes) -> PairIdentity:
    """The node's pair identity for a start as `role`: the stored one, or
    (a node that never completed a handshake) derived from the name and
    secret. Writes nothing."""
    check_role(node, role)
    stored = RecordStore(node).pair_binding()
    if stored is None:
        return PairIdentity(name, derive_pair_uuid(name, secret))
    if stored.name != name:
        raise NodeError(f"{node.path} belongs to pair {stored.name!r}, not {name!r}",
                        hint=f"start it with --pair {stored.name}")
    return PairIdentity(stored.name, stored.uuid)
