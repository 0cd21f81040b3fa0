"""The replication engine, sans-IO: PrimaryEngine and SecondaryEngine take
events with `now` and hand out messages, completions and timer deadlines."""

from blockmirror.engine.config import PrimaryConfig, SecondaryConfig
from blockmirror.engine.primary import (
    DISCONNECTED,
    INITIAL_SYNC,
    MIRRORING,
    RESYNCING,
    HostFlush,
    HostWrite,
    PrimaryEngine,
)
from blockmirror.engine.secondary import SecondaryEngine

__all__ = ["DISCONNECTED", "INITIAL_SYNC", "MIRRORING", "RESYNCING", "HostFlush", "HostWrite",
           "PrimaryConfig", "PrimaryEngine", "SecondaryConfig", "SecondaryEngine"]
