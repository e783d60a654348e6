# The README's two commands: `make example` and `make test` (as root on a fresh
# Debian machine with Python 3.11). `.ci/run` runs `make test`.

PYTHON ?= $(shell command -v /usr/bin/python3 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := python3-venv python3-dev libcap-dev gcc
PYTEST_ARGS ?=

.PHONY: example test lint system-packages

system-packages:
	@missing=""; \
	for pkg in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing Debian packages; run: sudo apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi

$(BIN)/chapiteau: setup.py | system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

example: $(BIN)/chapiteau
	@port=8000; [ "$$(id -u)" = 0 ] && port=80; \
	echo "serving examples/hello_wsgi.py on port $$port: curl http://127.0.0.1:$$port/ (Ctrl-C stops)"; \
	cd examples && CHAPITEAU_EXAMPLE_PORT=$$port PATH=$(CURDIR)/$(BIN):$$PATH exec $(CURDIR)/$(BIN)/chapiteau hello.ini

lint: $(BIN)/chapiteau
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(BIN)/chapiteau lint
	$(BIN)/pytest -q --timeout 300 tests integration $(PYTEST_ARGS)
