"""Deterministic simulator: the real engine, protocol and storage code under
seeded network, clock and disk faults, with invariant checkers."""
