"""Text for people: durations, time left before expiry, plain columns.

Shared by the CLI, the magics and the panel so they say the same thing the same way.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

# C0 and C1 control characters and DEL: what a terminal would act on rather than show.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


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


def printable(value) -> str:
    """Text safe to show a person: control characters (escape sequences, newlines) from a
    sandbox's file names or a caller's input appear as escapes, never act on the terminal.
    Used for names and metadata only: a run's own output is the program's, shown as it is."""
    text = "-" if value is None else str(value)
    return CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode(), text)
