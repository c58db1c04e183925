"""The one JSON reader (`worker.domain.exact_json`): exact numbers, no NaN, no key twice,
bounded nesting; each refusal one sentence."""

from __future__ import annotations

from decimal import Decimal

import pytest

from worker.domain.exact_json import MAX_INT_DIGITS, JsonRefusedError, loads_exact


def test_numbers_are_exact() -> None:
    value = loads_exact('{"a": 0.1, "b": 10, "c": -1.5e-7, "d": [1, 2.50]}')
    assert value == {
        "a": Decimal("0.1"),
        "b": 10,
        "c": Decimal("-1.5e-7"),
        "d": [1, Decimal("2.50")],
    }
    assert isinstance(value, dict)
    assert type(value["b"]) is int
    assert loads_exact("9" * MAX_INT_DIGITS) == int("9" * MAX_INT_DIGITS)
    assert loads_exact("-" + "9" * MAX_INT_DIGITS) == -int("9" * MAX_INT_DIGITS)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("9" * 41, "not JSON this worker accepts: a number with 41 digits is too long "
                   "(at most 40 digits)"),
        ("-" + "9" * 41, "not JSON this worker accepts: a number with 41 digits is too long "
                         "(at most 40 digits)"),
        ("NaN", "not JSON this worker accepts: NaN is not a number this worker accepts"),
        ("[-Infinity]", "not JSON this worker accepts: -Infinity is not a number this worker "
                        "accepts"),
        ("1e1000000000000000000", "not JSON this worker accepts: a number's exponent is too "
                                  "large"),
        ("[" * 5000 + "]" * 5000, "not JSON this worker accepts: nested too deeply"),
        ('{"a": 1, "a": 2}', "not JSON this worker accepts: the key 'a' appears twice in one "
                             "object"),
        ('{"x": {"' + "k" * 40 + '": 1, "' + "k" * 40 + '": 2}}',
         "not JSON this worker accepts: the key '" + "k" * 40 + "' appears twice in one object"),
        ('{"' + "k" * 41 + '": 1, "' + "k" * 41 + '": 2}',
         "not JSON this worker accepts: the key '" + "k" * 40 + "…' appears twice in one object"),
        ("{", "not JSON: Expecting property name enclosed in double quotes: line 1 column 2 "
              "(char 1)"),
        ("", "not JSON: Expecting value: line 1 column 1 (char 0)"),
    ],
)  # fmt: skip
def test_what_is_refused_and_why(text: str, reason: str) -> None:
    with pytest.raises(JsonRefusedError) as refused:
        loads_exact(text)
    assert str(refused.value) == reason


def test_keys_that_differ_are_kept_in_order() -> None:
    value = loads_exact('{"b": 1, "a": 2, "c": {"a": 3}}')
    assert isinstance(value, dict)
    assert list(value) == ["b", "a", "c"]
