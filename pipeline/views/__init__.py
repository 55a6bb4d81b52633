"""Pictures of a job: `masktok inspect` (one image: masks, boxes, ranks, LeGrad maps) and
`masktok report` (a self-contained HTML page on the whole job)."""
