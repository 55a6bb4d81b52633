# masktok: `make demo` and `make test` are all a newcomer needs; both install first.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
DEMO_DIR ?= demo-job

.PHONY: install test demo bench clean

install: $(STAMP)

# Rebuilt only when the dependency declarations change; torch/torchvision are pinned in
# constraints.txt (the CUDA build of 2.14.1 is the one with a working torchvision, on CPU too).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

# The import layers first (pyproject.toml [tool.importlinter]: a new loop fails here, in
# seconds). Then two pytest-xdist workers: the tests of the session's Ray clusters and finished
# job (group "ray") in one worker, one after the other; the other worker runs everything else,
# the tests with a Ray of their own (group "beside-ray": the demo, ...) among them.
test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n 2 --dist loadgroup

demo: install
	$(VENV)/bin/masktok demo $(DEMO_DIR)

bench: install
	$(PY) benchmarks/run_all.py $(BENCH)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
