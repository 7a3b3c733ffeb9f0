"""Human durations (``90s``, ``10m``, ``1h30m``, ``2d``, or plain seconds) in settings and YAML."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """``"1h30m"`` -> 90 minutes; a bare number is seconds. ValueError says what is expected."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 10m, 1h30m; found {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a positive duration; found {value!r}")
        return timedelta(seconds=value)
    text = value.strip().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return timedelta(seconds=float(text))
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"expected a duration like 30s, 10m, 1h30m or 2d; found {value!r}")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in _PART.findall(text)))


def format_duration(delta: timedelta) -> str:
    """The inverse of parse_duration for display: 5400 s -> ``1h30m``."""
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count, seconds = divmod(seconds, size)
        if count:
            out.append(f"{int(count)}{unit}")
    if seconds or not out:
        out.append(f"{round(seconds, 1):g}s")
    return "".join(out)
