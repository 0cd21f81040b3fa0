"""Argument types shared by subcommands: their errors say exactly what is allowed."""

from __future__ import annotations

import argparse
import math


def seconds_arg(text: str, maximum: float | None = None) -> float:
    """A number of seconds, more than 0 (and at most `maximum`)."""
    allowed = "more than 0 seconds" if maximum is None else f"more than 0 and at most {maximum:g} seconds"
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (allowed: {allowed})") from None
    if math.isnan(value) or math.isinf(value) or value <= 0 or (maximum is not None and value > maximum):
        raise argparse.ArgumentTypeError(f"{text!r} must be {allowed}")
    return value


def timeout_seconds(text: str) -> float:
    """--timeout of the commands that ask a running daemon."""
    return seconds_arg(text)
