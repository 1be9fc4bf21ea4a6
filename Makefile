# facekd: one-command set-up. Everything installs into ./.venv from pyproject.toml.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	# MTCNN (facenet-pytorch) pins older torch releases in its metadata; it runs on ours, so skip its deps.
	$(PY) -m pip install --no-deps 'facenet-pytorch==2.6.0'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile -q tests

demo: $(STAMP)
	$(PY) -m facekd.pipelines.demo

bench: $(STAMP)
	$(PY) -m bench.run_all

clean-venv:
	rm -rf $(VENV)
