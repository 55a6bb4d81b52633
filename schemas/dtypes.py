"""The weight dtypes masktok loads and writes, by their command-line name (torch's own).

One list for every command that takes ``--dtype``: ``answer`` and ``generate`` (which also
take ``auto``, inference/device.py) and ``consolidate`` (trainer/model/consolidate.py).
"""

WEIGHT_DTYPES = ("float32", "bfloat16", "float16")
