"""JSON text on the callback hot path: orjson, with the standard library where orjson refuses.

A callback's body is read once, its dedup key written once as canonical JSON, and its run's JSON
columns read and written several times on SQLite; with the ``json`` module these were about a
tenth of a callback's cost, and orjson does each several times faster.

The results are the standard library's:

- ``loads`` gives what ``json.loads`` gives. orjson reads strict RFC 8259 JSON; what it refuses
  (``NaN``, lone surrogate escapes, and everything malformed) is read again by ``json.loads``,
  which accepts the first two and raises its own, familiar ``ValueError`` for the rest. orjson
  reads an integer beyond 64 bits as a float, silently: text holding a number of 20 digits or
  more, or a negative one of 19 or more, is read by ``json.loads`` alone. Such a number is found
  without a regular expression (one cost several times what orjson's reading did): the text is
  mapped byte for byte, every digit to ``0`` and every byte a number may follow (``:``, ``,``,
  ``[``, whitespace) to ``|``, and searched for ``|`` then that many ``0``. A long number inside
  a string can match too (after a ``:`` or a comma in it); it is then only read more slowly.
- ``dumps`` and ``canonical`` give text ``json.loads`` reads back to equal values. Values orjson
  will not write (integers beyond 64 bits, non-string dictionary keys other than numbers, types
  JSON has no form for) go through ``json.dumps``, which writes or refuses them as before.
  orjson writes ``NaN`` and infinities as ``null`` where ``json.dumps`` wrote invalid JSON.
- ``canonical`` (sorted keys, no spaces, non-ASCII as is) is byte for byte what
  ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` writes for
  every value, except floats below 1e-4 or from 1e16 up, which orjson writes without the
  exponent's padding (``1e-05`` → ``0.00001``), and ``NaN`` and infinities (which only the
  ``json`` module reads, and are no RFC 8259 JSON), written ``null`` as by ``dumps``. Dedup
  keys hash this text, so a body carrying such a float, resent across the upgrade that brought
  orjson, is stored a second time; the machine still applies a task's terminal event once.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_WRITE = (
    orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
)
_CANONICAL = _WRITE | orjson.OPT_SORT_KEYS


def _number_map() -> bytes:
    table = bytearray(range(256))
    table[ord("|")] = ord("x")
    for byte in b"0123456789":
        table[byte] = ord("0")
    for byte in b":,[ \t\n\r":
        table[byte] = ord("|")
    return bytes(table)


_NUMBER_MAP = _number_map()
_LONG_POSITIVE = b"|" + b"0" * 20  # beyond 2**64 - 1 at 20 digits or more
_LONG_NEGATIVE = b"|-" + b"0" * 19  # beyond -2**63 at 19 digits or more


def _has_long_number(text: bytes | str) -> bool:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    mapped = b"|" + data.translate(_NUMBER_MAP)
    return _LONG_POSITIVE in mapped or _LONG_NEGATIVE in mapped


def loads(text: bytes | str) -> Any:
    """``json.loads(text)``, several times faster for what orjson reads."""
    if _has_long_number(text):
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def dumps(value: object) -> str:
    """Compact JSON text of ``value``, readable by ``json.loads``."""
    try:
        return orjson.dumps(value, option=_WRITE).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"))


def canonical(value: object) -> str:
    """Sorted, compact JSON text with non-ASCII kept: the form dedup keys hash."""
    try:
        return orjson.dumps(value, option=_CANONICAL).decode()
    except TypeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
