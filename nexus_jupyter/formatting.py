"""Text for people: durations, time left before expiry, plain columns.

Shared by the CLI, the magics and the panel so they say the same thing the same way.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone


def duration(seconds: float) -> str:
    """``45s``, ``12m 5s``, ``3h 20m``, ``2d 4h``."""
    seconds = int(max(seconds, 0))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [f"{days}d"] if days else []
    if hours:
        parts.append(f"{hours}h")
    if minutes and not days:
        parts.append(f"{minutes}m")
    if not days and not hours:
        parts.append(f"{seconds}s")
    return " ".join(parts)


def seconds_left(record: dict) -> float | None:
    """Seconds until the record's expiry, or None where it does not expire (paused, stopped)."""
    if not record.get("expires_at"):
        return None
    expires = datetime.fromisoformat(record["expires_at"]).replace(tzinfo=timezone.utc)
    return expires.timestamp() - time.time()


def columns(rows: list[list[str]]) -> str:
    """Rows as left-aligned columns (the first row is the header).

    Written here rather than with tabulate: its type sniffing took ~250 ms for 1,000 rows.
    """
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )
