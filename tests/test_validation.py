"""harness.validation: the one place typed settings are checked."""

import pytest

from harness.errors import HarnessError
from harness.validation import is_integer, is_number, require_integer


@pytest.mark.parametrize("value,minimum,expected", [
    (3, None, True), (-3, None, True), (True, None, False), (3.0, None, False), ("3", None, False),
    (0, 1, False), (1, 1, True), (0, 0, True), (None, None, False),
])
def test_is_integer(value, minimum, expected):
    assert is_integer(value, minimum) is expected


def test_is_number_refuses_bools():
    assert is_number(2) and is_number(2.5) and not is_number(False) and not is_number("2")


@pytest.mark.parametrize("value,minimum,nullable,message", [
    (0, 1, False, "^x must be a positive integer, got 0$"),
    (-1, 0, False, "^x must be a non-negative integer, got -1$"),
    (1, 2, False, "^x must be an integer >= 2, got 1$"),
    (2.5, 1, True, "^x must be a positive integer or null, got 2.5$"),
    (None, 1, False, "^x must be a positive integer, got None$"),
    (True, None, False, "^x must be an integer, got True$"),
])
def test_require_integer_is_one_line(value, minimum, nullable, message):
    with pytest.raises(HarnessError, match=message):
        require_integer(value, "x", minimum, nullable)


def test_require_integer_returns_what_it_accepts():
    assert require_integer(5, "x") == 5 and require_integer(None, "x", nullable=True) is None
