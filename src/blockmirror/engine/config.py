"""Engine settings. Units are in the names."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("sync", "async")
INITIAL_SYNCS = ("full", "checksum")


@dataclass(frozen=True)
class PrimaryConfig:
    mode: str = "async"
    window_bytes_max: int = 32 << 20      # lag bound (unacknowledged bytes); host writes wait beyond it
    window_writes_max: int = 4096
    heartbeat_interval_s: float = 1.0
    link_timeout_s: float = 5.0           # no message for this long = link down (black hole)
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 10.0
    final_round_bytes_max: int = 4 << 20  # a round this small ends in live mirroring
    rounds_max: int = 8                   # then the last round ends in live mirroring anyway
    resync_extent_bytes_max: int = 1 << 20
    activity_region_bytes: int = 4 << 20  # hot-region granularity of the activity log
    activity_checkpoint_s: float = 1.0
    # While mirroring, start the volumes' writeback after this many bytes of
    # host writes, so the activity checkpoint's flush has little to wait for.
    writeback_kick_bytes: int = 16 << 20
    rpo_warn_s: float | None = None  # warn while the lag (oldest write the secondary lacks) exceeds it
    initial_sync: str = "full"  # a round with no common base: send every chunk, or compare digests first
    # An incremental resync compares digests first for the chunks only suspect (recorded as unacknowledged
    # or hot, not written since the base) when there are at least this many.
    compare_suspect_chunks_min: int = 16
    # Deliberately broken behaviours, for the test suite's mutation checks only.
    mutations: frozenset = frozenset()

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.initial_sync not in INITIAL_SYNCS:
            raise ValueError(f"initial_sync must be one of {INITIAL_SYNCS}, not {self.initial_sync!r}")


@dataclass(frozen=True)
class SecondaryConfig:
    heartbeat_interval_s: float = 1.0
    link_timeout_s: float = 5.0
    journal_checkpoint_bytes: int = 64 << 20  # apply-and-truncate the journal beyond this
    journal_checkpoint_s: float = 5.0
    # Start the volumes' writeback after this many bytes applied, so the
    # journal checkpoint's flush has little to wait for (Acks wait behind it).
    writeback_kick_bytes: int = 16 << 20
    # A resync round's progress is made durable (volumes synced, resume point
    # recorded) after this many bytes or seconds: what an interruption re-sends.
    round_checkpoint_bytes: int = 16 << 20
    round_checkpoint_s: float = 0.25
    mutations: frozenset = frozenset()  # test suite's mutation checks only
