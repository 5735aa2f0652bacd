# Quick start: `make demo` and `make test`; each sets everything up by itself and is idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test test-slow bench docs clean

setup: $(STAMP)

# torch is pinned to 2.13.0 for set-up only (constraints.txt): the local CPU wheel on these machines.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,test,docs]"
	touch $(STAMP)

# Debian packages for tests that use real programs and files: headless Chromium for the report's
# browser test, Fashion-MNIST's IDX files for the loader. Installed where apt-get and root (or sudo)
# allow; elsewhere those tests skip and say why.
SYSTEM_PACKAGES := chromium chromium-driver dataset-fashion-mnist
system-deps:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  echo "installing Debian packages for the tests: $(SYSTEM_PACKAGES)"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES); } >/dev/null 2>&1 \
	    || echo "could not install $(SYSTEM_PACKAGES); the tests that need them will be skipped"; \
	else echo "cannot install $(SYSTEM_PACKAGES) here; the tests that need them will be skipped"; fi

demo: $(STAMP)
	$(VENV)/bin/infinet demo

test: $(STAMP) system-deps
	$(PY) -m pytest -q -p no:cacheprovider -n 2

test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow

# NT_PYTHON=/path/to/venv/bin/python (neural-tangents 0.6.5, jax 0.4.23) adds the comparison.
bench: $(STAMP)
	$(PY) benchmarks/fc_kernel.py
	$(PY) benchmarks/conv_kernel.py $(if $(NT_PYTHON),--nt-python $(NT_PYTHON),)
	$(PY) benchmarks/predict.py $(if $(NT_PYTHON),--nt-python $(NT_PYTHON),)
	$(PY) benchmarks/under_load.py $(if $(NT_PYTHON),--nt-python $(NT_PYTHON),)
	$(PY) benchmarks/sequence_kernel.py $(if $(NT_PYTHON),--nt-python $(NT_PYTHON),)

# the documentation, built offline from the docstrings; any warning (a broken reference) fails it
docs: $(STAMP)
	$(PY) docs/generate.py
	$(PY) -m sphinx -b html -W --keep-going -q docs docs/_build/html
	@echo "documentation: docs/_build/html/index.html"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info reports
