"""Version numbers of the on-disk formats. Bump one when its format changes meaning:
readers refuse a job directory written with a version they do not know."""

SPEC_VERSION = 1
MANIFEST_SCHEMA_VERSION = 1
RECORD_SCHEMA_VERSION = 2
#: Record versions readers accept: 1 has no ``mask_iou`` (objects cannot be re-filtered).
RECORD_SCHEMA_VERSIONS = (1, 2)
COMMIT_VERSION = 1

#: How ``tokens.zarr`` cuts its arrays into files (group attr ``layout``). The arrays and
#: their values are the same in every layout, so the record version stays; readers pick
#: their read path by it. "shard-chunks": one chunk per manifest shard (stores written
#: before the attr existed have no ``layout``); "sharded-rows": Zarr v3's sharding codec,
#: one shard file per manifest shard, one-row chunks inside (stages/write.py).
ZARR_LAYOUT = "sharded-rows"
ZARR_LAYOUTS = ("shard-chunks", "sharded-rows")
