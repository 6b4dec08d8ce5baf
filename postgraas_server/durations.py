"""Durations as people write them: 90, "90s", "30m", "2h", "7d"."""

from __future__ import annotations

import re

UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_RE = re.compile(r"([0-9]{1,9})([smhd]?)")
# Ten years: long enough for anything, short enough to stay a sane datetime.
MAX_SECONDS = 10 * 365 * 86400


def parse_duration(value: object) -> int:
    """Seconds, from a positive integer or a string such as "30m". Raises ValueError saying why."""
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds or a string like '30m', '2h', '7d'")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (match := DURATION_RE.fullmatch(value.strip())):
        seconds = int(match.group(1)) * UNITS[match.group(2)]
    else:
        raise ValueError("must be a number of seconds or a string like '30m', '2h', '7d'")
    if seconds <= 0:
        raise ValueError("must be positive")
    if seconds > MAX_SECONDS:
        raise ValueError("must be at most 10 years")
    return seconds


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
