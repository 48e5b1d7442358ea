PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_DEMO := $(VENV)/.installed-demo
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP_DEMO): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[cli]"
	touch $@

$(STAMP_TEST): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: $(STAMP_DEMO)
	$(VENV)/bin/attention-jax train --output runs/demo

test: $(STAMP_TEST)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
