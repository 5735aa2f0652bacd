# Quick start: `make demo` and `make test`; each sets everything up by itself and is idempotent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test test-slow bench clean

setup: $(STAMP)

# torch is pinned to 2.13.0 for set-up only (constraints.txt): the local CPU wheel on these machines.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

# Headless Chromium for the report's browser test: installed where apt-get and root (or sudo) allow;
# elsewhere the test skips and says why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  echo "installing Chromium for the report test (Debian packages chromium, chromium-driver)"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 \
	    || echo "could not install Chromium; the browser test will be skipped"; \
	else echo "Chromium is not installed and cannot be installed here; the browser test will be skipped"; fi

demo: $(STAMP)
	$(VENV)/bin/infinet demo

test: $(STAMP) browser
	$(PY) -m pytest -q -p no:cacheprovider

test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow

bench: $(STAMP)
	$(PY) benchmarks/fc_kernel.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info reports
