# Everything sets itself up from nothing: a venv in .venv with casbackup installed editable.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all setup sysdeps demo test lint bench clean

all: test

# No `pip install --upgrade pip` first: the venv's own pip (23+) installs all of this, and the
# upgrade cost a download and an install on every fresh clone (CI).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# System packages the tests need, each checked by a command or file it provides: FUSE userspace for
# the mount tests, attr/acl for the extended-attribute and ACL tests, btrfs-progs, zfs-fuse
# and lvm2 for the file-system snapshot tests (tests/fssnap), xfsprogs for restores onto XFS
# (tests/cli/test_restore_xfs.py), zsh and fish for the shell
# completion tests, Chromium and fonts for the dashboard's browser tests (driven through
# Playwright, never `playwright install`: that downloads a browser, and these machines are
# offline). Missing ones are installed in one
# apt-get run when we are root with apt; otherwise those tests skip with a reason (and fail
# under CI=true).
SYSDEPS := fusermount3:fuse3 setfattr:attr setfacl:acl chromium:chromium \
	chromedriver:chromium-driver /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf:fonts-dejavu-core \
	btrfs:btrfs-progs zfs:zfs-fuse lvcreate:lvm2 mkfs.xfs:xfsprogs zsh:zsh fish:fish

sysdeps:
	@missing=""; for pair in $(SYSDEPS); do \
		probe="$${pair%%:*}"; \
		case "$$probe" in /*) [ -e "$$probe" ];; *) command -v "$$probe" >/dev/null 2>&1;; esac || \
			missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing system packages for the tests:$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null 2>&1; } || \
		echo "warning: could not install$$missing; the tests that need them will skip"; \
	fi

demo: $(STAMP)
	$(BIN)/python sample_app/demo.py

lint: $(STAMP)
	$(BIN)/ruff check casbackup tests bench sample_app
	$(BIN)/ruff format --check casbackup tests bench sample_app

# The suite runs in parallel: one pytest-xdist worker per core by default (TEST_WORKERS=1 runs
# it in one process). --dist loadfile keeps each test file on one worker: module-scoped
# fixtures are built once, and the ZFS tests, which share one zfs-fuse daemon and list
# snapshots across every pool, never overlap. casbackup is byte-compiled first: the tests
# start the CLI in a subprocess hundreds of times, and under PYTHONDONTWRITEBYTECODE each
# start would compile the modules it imports again (about half its CPU time).
TEST_WORKERS ?= auto
PYTEST_ARGS ?=

test: $(STAMP) sysdeps
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m compileall -q casbackup >/dev/null
	$(BIN)/python -m pytest $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-work bench/work .pytest_cache
