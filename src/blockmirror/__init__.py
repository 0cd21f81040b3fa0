"""blockmirror: remote mirroring of block volumes that survives link failures
by using copy-on-write snapshots."""

__version__ = "0.1.0"
