"""orchestrator/jsontext.py gives the json module's results, faster.

Dedup keys hash ``canonical`` text: it must stay byte for byte what the json module wrote before
orjson, or a callback resent across an upgrade would be stored and applied as a new one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator import jsontext

PAYLOADS = sorted((Path(__file__).parent / "fixtures" / "payloads").glob("*.json"))


def _stdlib_canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: p.stem)
def test_documented_bodies_read_and_key_as_with_the_json_module(path: Path) -> None:
    raw = path.read_bytes()
    assert jsontext.loads(raw) == json.loads(raw)
    assert jsontext.canonical(json.loads(raw)) == _stdlib_canonical(json.loads(raw))


# JSON values as bodies carry them: floats in the range json writes without an exponent.
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(min_value=1e-4, max_value=1e15, allow_nan=False)
    | st.floats(min_value=-1e15, max_value=-1e-4, allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(_values | st.integers())
def test_canonical_text_is_the_json_modules(value: object) -> None:
    assert jsontext.canonical(value) == _stdlib_canonical(value)
    assert json.loads(jsontext.dumps(value)) == value
    assert jsontext.loads(jsontext.dumps(value)) == value


def test_what_orjson_refuses_is_read_as_the_json_module_reads_it() -> None:
    assert jsontext.loads(b'{"n": 123456789012345678901234567890}') == {
        "n": 123456789012345678901234567890
    }
    assert jsontext.loads('"\\ud800"') == "\ud800"  # a lone surrogate escape
    assert math.isnan(jsontext.loads(b'{"x": NaN}')["x"])


def test_malformed_text_raises_the_json_modules_error() -> None:
    with pytest.raises(ValueError, match="Expecting ',' delimiter: line 1 column 9"):
        jsontext.loads(b'{"a": 1 "b": 2}')


def test_what_orjson_will_not_write_is_written_by_the_json_module() -> None:
    big = {"n": 2**70}
    assert jsontext.canonical(big) == _stdlib_canonical(big)
    assert json.loads(jsontext.dumps({**big, 3: "three"})) == {"n": 2**70, "3": "three"}
    lone = {"s": "\ud800"}
    assert jsontext.canonical(lone) == _stdlib_canonical(lone)
    with pytest.raises(TypeError):
        jsontext.dumps({"when": object()})


@given(_values | st.integers())
def test_text_is_read_as_the_json_module_reads_it(value: object) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        assert jsontext.loads(text) == json.loads(text)
        assert jsontext.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        "123456789012345678901",
        " -123456789012345678901",
        '{"a":123456789012345678901}',
        '{"a": [1,\n 123456789012345678901]}',
        "[-123456789012345678901.5]",
        "-9223372036854775809",
        '{"a":\t-9223372036854775809}',
        '{"id": "x", "n": 18446744073709551616}',
    ],
)
def test_long_numbers_anywhere_a_number_starts_keep_every_digit(text: str) -> None:
    assert jsontext.loads(text) == json.loads(text)
    assert jsontext.loads(text.encode()) == json.loads(text)
