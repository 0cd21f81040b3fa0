"""The replication engine, sans-IO: one node object per role
(`PrimaryNode`, `SecondaryNode`) that takes typed events with `now` and
returns an `Output` (messages, completions, links to open or close, log
lines, phase changes, the next timer). phases.py holds every legal move."""

from blockmirror.engine.config import PrimaryConfig, SecondaryConfig
from blockmirror.engine.events import (
    Accepted, Answer, CloseLink, Dial, HostFlush, HostRequests, HostWrite, LinkClosed, LinkUp, LogLine, Output,
    Received, StartVerify, Stop, TakeSnapshot,
)
from blockmirror.engine.phases import PrimaryPhase, SecondaryPhase
from blockmirror.engine.primary import PrimaryNode
from blockmirror.engine.secondary import NoConsistentImage, SecondaryNode

__all__ = ["Accepted", "Answer", "CloseLink", "Dial", "HostFlush", "HostRequests", "HostWrite", "LinkClosed",
           "LinkUp", "LogLine", "NoConsistentImage", "Output", "PrimaryConfig", "PrimaryNode", "PrimaryPhase",
           "Received", "SecondaryConfig", "SecondaryNode", "SecondaryPhase", "StartVerify", "Stop",
           "TakeSnapshot"]
