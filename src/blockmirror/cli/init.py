"""`blockmirror init DIR --volume NAME=SIZE ...`: create a node directory."""

import argparse

from blockmirror.errors import ConfigError
from blockmirror.storage import CHUNK_SIZE_DEFAULT, Node
from blockmirror.units import format_size, parse_size


def parse_volume(text: str) -> tuple[str, int]:
    name, sep, size = text.partition("=")
    if not sep or not name:
        raise ConfigError(f"bad --volume {text!r}: expected NAME=SIZE", hint="write --volume NAME=SIZE, e.g. --volume db=4GiB")
    return name, parse_size(size)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init", help="create a node directory with its volumes",
        description="Create a node: a metadata store (SQLite, WAL) and one raw sparse file per volume. "
                    "Initialise the primary and the secondary with the same volume names and sizes.")
    p.add_argument("dir", metavar="DIR", help="a new or empty directory")
    p.add_argument("--volume", metavar="NAME=SIZE", action="append", required=True,
                   help="a volume and its size (512MiB, 4GiB; a multiple of 4 KiB); repeat for more")
    p.add_argument("--chunk-size", metavar="SIZE", default=str(CHUNK_SIZE_DEFAULT),
                   help="copy-on-write and resync unit, a power of two >= 4KiB (default 64KiB)")
    p.set_defaults(func=run)


def run(args) -> int:
    volumes: dict[str, int] = {}
    for spec in args.volume:
        name, size = parse_volume(spec)
        if name in volumes:
            raise ConfigError(f"volume {name!r} given twice", hint="give each volume a distinct name")
        volumes[name] = size
    chunk_size = parse_size(args.chunk_size)
    with Node.create(args.dir, volumes, chunk_size=chunk_size) as node:
        print(f"initialised node {args.dir} ({node.node_uuid}), chunk size {format_size(node.chunk_size)}")
        for vol in node.volumes.values():
            print(f"  volume {vol.name}: {format_size(vol.size)}  uuid {vol.uuid}")
    return 0
