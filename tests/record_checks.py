"""Checks on cache records (the dicts the trainer's readers yield) that several tests share."""

from __future__ import annotations

import numpy as np


def assert_same_record(a: dict, b: dict) -> None:
    """Same keys, same values, same types and dtypes: bit for bit."""
    assert a.keys() == b.keys()
    for k, va in a.items():
        if isinstance(va, np.ndarray):
            assert va.dtype == b[k].dtype and np.array_equal(va, b[k]), k
        else:
            assert va == b[k] and type(va) is type(b[k]), k
