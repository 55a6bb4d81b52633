"""The formats and contracts every part of masktok shares, each with a version number
(versions.py) where it is on disk:

    spec      the job spec (job.toml)                 manifest  manifest.parquet
    record    the arrays of tokens.zarr / a sample     jobdir    the names of a job's files
    commits   reading commits/ (which shards are done) errors    the user errors, one base

The trainer reads a job directory through these modules alone.
"""
