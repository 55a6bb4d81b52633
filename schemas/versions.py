"""Version numbers of the on-disk formats. Bump one when its format changes meaning:
readers refuse a job directory written with a version they do not know."""

SPEC_VERSION = 1
MANIFEST_SCHEMA_VERSION = 1
RECORD_SCHEMA_VERSION = 1
COMMIT_VERSION = 1
