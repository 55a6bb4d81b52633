"""The formats every part of masktok shares: the job spec, the manifest and the record,
each with a version number (see versions.py)."""
