import math

import pytest

from gptlab.data.units import bits_per


def test_bits_per_byte_and_char():
    split = {"tokens": 100, "chars": 300, "bytes": 400}  # 3 characters, 4 bytes per token
    assert bits_per(math.log(2) * 8, split, "bytes") == pytest.approx(2.0)  # 8 bits per token / 4 bytes
    assert bits_per(math.log(2) * 6, split, "chars") == pytest.approx(2.0)


def test_missing_counts_give_none():
    assert bits_per(1.0, {"tokens": 10}, "bytes") is None
    assert bits_per(1.0, {"tokens": 0, "bytes": 5}, "bytes") is None
