# The README's two commands: `make example` and `make test` (as root on a fresh
# Debian machine with Python 3.11). `.ci/run` runs `make test`. `make bench` measures
# chapiteau against circusd 0.19 and the servers alone (docs/benchmarks.md).

PYTHON ?= $(shell command -v /usr/bin/python3 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# What users install: the wheel, not the checkout. `make example` runs it and the
# integration tests test it.
WHEEL_VENV ?= .venv-wheel
SYSTEM_PACKAGES := python3-venv python3-dev libcap-dev gcc libseccomp2 logrotate
# What only `make test` needs: the dashboard's browser test drives Debian's headless Chromium;
# the load tests (integration/load.py) run wrk; systemd-analyze (package systemd, absent from a
# bare Debian image) judges examples/systemd/.
TEST_SYSTEM_PACKAGES := chromium chromium-driver wrk systemd zsh
# What only the benchmarks need: libev for building bjoern, and the load generator.
BENCH_PACKAGES := libev-dev wrk
# circus, gunicorn and bjoern (bench/requirements.txt), apart from chapiteau's own.
BENCH_VENV ?= .venv-bench
# e.g. BENCH_ARGS='--quick' or BENCH_ARGS='bjoern control'
BENCH_ARGS ?=
PYTEST_ARGS ?=
# As root, the supervisor and the workers run as nobody, who must be able to read the
# virtualenv and the package. A checkout nobody cannot reach (a clone under /root, 0700)
# is copied here, world-readable, and the targets run in the copy.
STAGE ?= /opt/chapiteau
SERVICE_USER ?= nobody
REACHABLE := $(shell [ "$$(id -u)" != 0 ] || runuser -u $(SERVICE_USER) -- test -r $(CURDIR)/pyproject.toml && echo yes)

.PHONY: example test lint wheel-venv system-packages bench test-debian13

ifneq ($(REACHABLE),yes)
example test lint wheel-venv bench:
	@echo "$(SERVICE_USER) cannot read $(CURDIR): running from a world-readable copy in $(STAGE)"
	@mkdir -p $(STAGE)
	@find $(STAGE) -mindepth 1 -maxdepth 1 ! -name .venv ! -name $(BENCH_VENV) -exec rm -rf {} +
	@tar -C $(CURDIR) --exclude=./.venv --exclude=./$(WHEEL_VENV) --exclude=./$(BENCH_VENV) --exclude=./.git \
	  --exclude=__pycache__ --exclude=./.pytest_cache --exclude=./.ruff_cache \
	  --exclude=./.hypothesis --exclude=./build --exclude=./dist --exclude='*.egg-info' -cf - . \
	  | tar -C $(STAGE) --no-same-owner -xf -
	@chmod -R u+rwX,go+rX,go-w $(STAGE)
	@$(MAKE) --no-print-directory -C $(STAGE) REACHABLE=yes $@
else

system-packages:
	@missing=""; \
	for pkg in $(SYSTEM_PACKAGES) $(EXTRA_PACKAGES); do \
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
$(BIN)/chapiteau: pyproject.toml setup.py | system-packages
	umask 022 && $(PYTHON) -m venv $(VENV)
	umask 022 && $(BIN)/pip install -q --upgrade pip
	umask 022 && $(BIN)/pip install -q -e '.[test,metrics,web]'
	@touch $@

# The wheel that Debian's pip builds from this checkout, installed (not editable) into a
# fresh virtualenv made with that same pip, with the extras in EXTRAS (e.g. [test,metrics]).
# build/ goes first: setuptools would pack into the wheel what a previous build left there.
# --use-pep517: python-prctl has no pyproject.toml, and pip 23.0 builds such a package with
# the deprecated `setup.py install` (and says so) unless told.
wheel-venv: | system-packages
	rm -rf build dist $(WHEEL_VENV)
	umask 022 && $(PYTHON) -m venv $(WHEEL_VENV)
	umask 022 && $(WHEEL_VENV)/bin/pip wheel -q --no-deps --wheel-dir dist .
	umask 022 && $(WHEEL_VENV)/bin/pip install -q --use-pep517 "$$(echo dist/chapiteau-*.whl)$(EXTRAS)"

# As root, the broker switches to its own account after binding (docs/security.md).
example: wheel-venv
	@[ "$$(id -u)" != 0 ] || id -u chapiteau-broker >/dev/null 2>&1 || \
	  useradd --system --no-create-home --shell /usr/sbin/nologin chapiteau-broker
	@port=8000; [ "$$(id -u)" = 0 ] && port=80; \
	echo "serving examples/hello_wsgi.py on port $$port: curl http://127.0.0.1:$$port/ (Ctrl-C stops)"; \
	echo "control it with $(CURDIR)/$(WHEEL_VENV)/bin/chapiteauctl"; \
	cd examples && CHAPITEAU_EXAMPLE_PORT=$$port PATH=$(CURDIR)/$(WHEEL_VENV)/bin:$$PATH \
	  exec $(CURDIR)/$(WHEEL_VENV)/bin/chapiteau hello.ini

lint: $(BIN)/chapiteau
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The fast tests run on the checkout (editable); the integration tests run with the wheel
# venv's Python, so the chapiteau they start is the installed one. The check that every
# module is installed goes first: a missing one would otherwise show as timeouts.
test: lint
	@$(MAKE) --no-print-directory system-packages SYSTEM_PACKAGES='$(SYSTEM_PACKAGES) $(TEST_SYSTEM_PACKAGES)'
	umask 022 && $(BIN)/pytest -q --timeout 300 tests $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory wheel-venv EXTRAS='[test,metrics,web]'
	umask 022 && $(WHEEL_VENV)/bin/pytest -q --timeout 300 integration/test_installed_package.py
	umask 022 && $(WHEEL_VENV)/bin/pytest -q --timeout 300 integration $(PYTEST_ARGS)

$(BENCH_VENV)/bin/circusd: bench/requirements.txt integration/circus-requirements.txt | system-packages
	umask 022 && $(PYTHON) -m venv $(BENCH_VENV)
	umask 022 && $(BENCH_VENV)/bin/pip install -q --upgrade pip
	umask 022 && $(BENCH_VENV)/bin/pip install -q -r bench/requirements.txt
	@touch $@

# Every row of docs/benchmarks.md's tables; 25 to 35 minutes (BENCH_ARGS=--quick: about 6).
bench: EXTRA_PACKAGES := $(BENCH_PACKAGES)
# chapiteau as users install it (the wheel, as `make example` runs it): an editable
# install adds its own import finder to every process, the broker's memory included.
bench: $(BENCH_VENV)/bin/circusd | system-packages
	@$(MAKE) --no-print-directory wheel-venv
	umask 022 && $(WHEEL_VENV)/bin/python bench/run.py $(BENCH_ARGS)
endif

# `make test` on Debian 13 (Python 3.13), in a debootstrap chroot kept in /srv (as root;
# not run by CI, which tests Debian 12's 3.11).
test-debian13:
	bash .ci/debian13
