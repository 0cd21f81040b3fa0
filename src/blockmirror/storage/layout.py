"""What a node is on disk: its directory layout, and the limits a volume
spec (names, sizes, chunk size) must meet."""

from __future__ import annotations

import re

from blockmirror.errors import ConfigError

CHUNK_SIZE_DEFAULT = 64 * 1024
CHUNK_SIZE_MIN = 4096
CHUNK_SIZE_MAX = 16 * 1024 * 1024
VOLUME_ALIGN_BYTES = 4096
VOLUMES_MAX = 256
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

VOLUME_DIR = "volumes"  # NAME.img: one raw sparse file per volume
COW_DIR = "cow"  # SNAP-VOL.cow (a snapshot's preserved originals), spare-N.cow
LOCK_NAME = "blockmirror.lock"  # one process per node


def validate_volume_spec(volumes: dict[str, int], chunk_size: int) -> None:
    if not volumes:
        raise ConfigError("no volumes given", hint="add --volume NAME=SIZE")
    if len(volumes) > VOLUMES_MAX:
        raise ConfigError(f"too many volumes ({len(volumes)}); at most {VOLUMES_MAX}")
    if chunk_size < CHUNK_SIZE_MIN or chunk_size > CHUNK_SIZE_MAX or chunk_size & (chunk_size - 1):
        raise ConfigError(
            f"chunk size {chunk_size} must be a power of two between {CHUNK_SIZE_MIN} and {CHUNK_SIZE_MAX}",
            hint="use --chunk-size 64KiB")
    for name, size in volumes.items():
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"invalid volume name {name!r}",
                hint="names are 1-64 characters of letters, digits, '.', '_', '-', starting with a letter or digit")
        if size <= 0:
            raise ConfigError(f"volume {name}: size must be greater than zero")
        if size % VOLUME_ALIGN_BYTES:
            raise ConfigError(f"volume {name}: size {size} is not a multiple of {VOLUME_ALIGN_BYTES}",
                              hint="use sizes like 512MiB or 4GiB")
