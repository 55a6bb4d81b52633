"""The job: planning, the Ray execution graph, the shard writers, commit/resume, status and views."""
