"""The job: planning, the Ray execution graph, commit/resume and the command line."""
