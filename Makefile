# Two commands do all the set-up: `make serve` and `make test` (each creates .venv when missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install system-deps serve test test-slow test-ray lint format bench clean

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]" -e ./client
	touch $@

# Debian packages some tests use: the data sets (Fashion-MNIST, Noto Color Emoji, Unicode emoji list) and
# Chromium + chromedriver for the playground's browser test. Never needs root: as root (CI containers) it installs
# them with apt-get, with passwordless sudo through sudo; otherwise it says how, and those tests skip with a reason.
SYSTEM_PACKAGES := dataset-fashion-mnist fonts-noto-color-emoji unicode-data chromium chromium-driver
system-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
		&& [ -d /usr/share/datasets/fashion-mnist ] && [ -f /usr/share/unicode/emoji/emoji-test.txt ]; then \
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

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/adaptformer serve --host $(HOST) --port $(PORT)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint system-deps
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

# Ray Serve tests (docs/SCALING.md): installs the ray extra, starts a local Ray cluster on 127.0.0.1 (a few minutes).
# As root where unshare works they run in a network namespace of their own with only a loopback interface.
test-ray: install
	$(PY) -m pip install -q -e ".[ray]"
	@if [ "$$(id -u)" = 0 ] && unshare -n true 2>/dev/null && command -v ip >/dev/null; then \
		echo "Ray tests in a private network namespace (loopback only)"; \
		unshare -n sh -c 'ip link set lo up && exec $(PY) -m pytest -q -m ray tests/ray'; \
	else \
		$(PY) -m pytest -q -m ray tests/ray; \
	fi

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build *.egg-info
