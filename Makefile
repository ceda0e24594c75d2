# Two commands do all the set-up: `make serve` and `make test` (each creates .venv when missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-server system-deps serve test test-slow test-workers test-ray ci lint format bench clean

# Three layers, each installed once: torch (the big one), the server, then the dev tools and the client.
# `make serve` stops after the server; `make test` adds the rest. TORCH_INDEX_URL picks where torch comes from,
# e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU-only build (README, "Set-up").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX_URL ?=

$(VENV)/.torch:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) $(TORCH_SPEC)
	touch $@

$(VENV)/.installed-server: $(VENV)/.torch pyproject.toml
	$(PY) -m pip install -q -e ".[server]"
	touch $@

$(VENV)/.installed: $(VENV)/.installed-server client/pyproject.toml
	$(PY) -m pip install -q -e ".[dev]" -e ./client
	touch $@

# Debian packages some tests use: the data sets (Fashion-MNIST, Noto Color Emoji, Unicode emoji list),
# Chromium + chromedriver for the playground's browser test, nginx for the compose replicas' proxy config, and libb64
# for perf_analyzer (the tritonclient wheel's binary: tests/server/test_perf_analyzer.py).
# Never needs root: as root (CI containers) it installs them with apt-get, with passwordless sudo through sudo;
# otherwise it says how, and those tests skip with a reason.
# Under CI=true a package that is still missing afterwards (no apt, no root, apt failed) fails the run instead:
# CI never skips those tests silently.
SYSTEM_PACKAGES := dataset-fashion-mnist fonts-noto-color-emoji unicode-data chromium chromium-driver nginx-light libb64-0d
SYSTEM_DEPS_PRESENT := command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
	&& { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } \
	&& [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
	&& [ -f /usr/share/unicode/emoji/emoji-test.txt ] && [ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] \
	&& { ldconfig -p 2>/dev/null || /sbin/ldconfig -p; } | grep -q 'libb64\.so\.0d'
system-deps:
	@if $(SYSTEM_DEPS_PRESENT); then \
		echo "test data sets and chromium are installed"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES)) \
			|| echo "note: could not install $(SYSTEM_PACKAGES); the tests needing them will be skipped"; \
	elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		(sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES)) \
			|| echo "note: could not install $(SYSTEM_PACKAGES); the tests needing them will be skipped"; \
	else \
		echo "note: run as root: apt-get install $(SYSTEM_PACKAGES); until then the tests needing them skip"; \
	fi
	@if [ "$${CI:-}" = true ] && ! ($(SYSTEM_DEPS_PRESENT)); then \
		echo "error: CI=true and the system packages the tests need are missing ($(SYSTEM_PACKAGES)):" \
			"install them (as root: make system-deps) instead of letting their tests skip" >&2; \
		exit 1; \
	fi

install: $(VENV)/.installed

install-server: $(VENV)/.installed-server

serve: install-server
	$(VENV)/bin/adaptformer serve --host $(HOST) --port $(PORT)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy  # the library, the server and the client ([tool.mypy] in pyproject.toml)

# -rs lists every skipped test with its reason (with the system packages installed there is none).
test: lint system-deps
	$(PY) -m pytest -q -rs

# The long tests (full load, repeated crashes); each may run longer than the default run's 300 s per-test timeout.
test-slow: install
	$(PY) -m pytest -q -rs -m slow --timeout 1800

# The tests that start server processes (directly, or through the reliability tests' shared, keyed and probed
# servers), again with every server as 2 front processes + an engine process (--workers 2; tests/support/process.py
# reads TEST_SERVER_WORKERS). The in-process tests build the same app.
SERVER_TESTS = $$(grep -rlE 'ServerProcess[(]|live_server[(]|Server[(]|shared_server|keyed_server|probed_server' tests --include='test_*.py' | sort)
test-workers: install system-deps
	TEST_SERVER_WORKERS=2 $(PY) -m pytest -q -rs $(SERVER_TESTS) tests/docs

# Ray Serve tests (docs/SCALING.md): installs the ray extra, starts a local Ray cluster on 127.0.0.1 (a few minutes).
# As root where unshare works they run in a network namespace of their own with only a loopback interface.
test-ray: install
	$(PY) -m pip install -q -e ".[ray]"
	@if [ "$$(id -u)" = 0 ] && unshare -n true 2>/dev/null && command -v ip >/dev/null; then \
		echo "Ray tests in a private network namespace (loopback only)"; \
		unshare -n sh -c 'ip link set lo up && exec $(PY) -m pytest -q -rs -m ray --timeout 1800 tests/ray tests/deploy'; \
	else \
		$(PY) -m pytest -q -rs -m ray --timeout 1800 tests/ray tests/deploy; \
	fi

# What CI runs (.ci/run): the default suite (ruff, system packages, pytest), the server-process tests with --workers 2,
# then the slow tests, then the Ray tests.
# One after the other: the Ray tests install the ray extra into the venv the others use.
ci:
	$(MAKE) test
	$(MAKE) test-workers
	$(MAKE) test-slow
	$(MAKE) test-ray

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build *.egg-info
