# The README's two commands: `make example` and `make test` (as root on a fresh
# Debian machine with Python 3.11). `.ci/run` runs `make test`.

PYTHON ?= $(shell command -v /usr/bin/python3 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := python3-venv python3-dev libcap-dev gcc
PYTEST_ARGS ?=
# As root, the supervisor and the workers run as nobody, who must be able to read the
# virtualenv and the package. A checkout nobody cannot reach (a clone under /root, 0700)
# is copied here, world-readable, and the targets run in the copy.
STAGE ?= /opt/chapiteau
SERVICE_USER ?= nobody
REACHABLE := $(shell [ "$$(id -u)" != 0 ] || runuser -u $(SERVICE_USER) -- test -r $(CURDIR)/setup.py && echo yes)

.PHONY: example test lint system-packages

ifneq ($(REACHABLE),yes)
example test lint:
	@echo "$(SERVICE_USER) cannot read $(CURDIR): running from a world-readable copy in $(STAGE)"
	@mkdir -p $(STAGE)
	@find $(STAGE) -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
	@tar -C $(CURDIR) --exclude=./.venv --exclude=./.git --exclude=__pycache__ \
	  --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude=./.hypothesis -cf - . \
	  | tar -C $(STAGE) --no-same-owner -xf -
	@chmod -R u+rwX,go+rX,go-w $(STAGE)
	@$(MAKE) --no-print-directory -C $(STAGE) REACHABLE=yes $@
else

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

# umask 022 whatever the caller's: nobody must read the virtualenv, and the integration
# tests write files (configs, scripts) for nobody to read.
$(BIN)/chapiteau: setup.py | system-packages
	umask 022 && $(PYTHON) -m venv $(VENV)
	umask 022 && $(BIN)/pip install -q --upgrade pip
	umask 022 && $(BIN)/pip install -q -e '.[test]'
	@touch $@

example: $(BIN)/chapiteau
	@port=8000; [ "$$(id -u)" = 0 ] && port=80; \
	echo "serving examples/hello_wsgi.py on port $$port: curl http://127.0.0.1:$$port/ (Ctrl-C stops)"; \
	cd examples && CHAPITEAU_EXAMPLE_PORT=$$port PATH=$(CURDIR)/$(BIN):$$PATH exec $(CURDIR)/$(BIN)/chapiteau hello.ini

lint: $(BIN)/chapiteau
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(BIN)/chapiteau lint
	umask 022 && $(BIN)/pytest -q --timeout 300 tests integration $(PYTEST_ARGS)
endif
