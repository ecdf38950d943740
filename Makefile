# Everything sets itself up from nothing: a venv in .venv with casbackup installed editable.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all setup sysdeps demo test lint bench clean

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# System packages the mount tests need (FUSE userspace), attr/acl for the extended
# attribute and ACL tests, and the file-system snapshot tools. Installed when missing and we are
# root with apt; otherwise those tests skip with a reason (and fail under CI=true).
sysdeps:
	@if ! command -v fusermount3 >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing fuse3 (for casbackup mount)"; \
		apt-get install -y -q fuse3 >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fuse3 >/dev/null 2>&1; } || \
		echo "warning: could not install fuse3; mount tests will skip"; \
	fi
	@if { ! command -v setfacl >/dev/null 2>&1 || ! command -v setfattr >/dev/null 2>&1; } && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing attr and acl (setfattr, setfacl: for the extended attribute tests)"; \
		apt-get install -y -q attr acl >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q attr acl >/dev/null 2>&1; } || \
		echo "warning: could not install attr and acl; ACL tests will skip"; \
	fi
	@# File-system snapshot tools (tests/fssnap): Btrfs for real, ZFS through zfs-fuse, lvm2.
	@for pair in btrfs:btrfs-progs zfs:zfs-fuse lvcreate:lvm2; do \
		tool=$${pair%%:*}; pkg=$${pair#*:}; \
		if ! command -v $$tool >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing $$pkg (for file-system snapshots)"; \
			apt-get install -y -q $$pkg >/dev/null 2>&1 || \
			{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$pkg >/dev/null 2>&1; } || \
			echo "warning: could not install $$pkg; its snapshot tests will skip"; \
		fi; \
	done

demo: $(STAMP)
	$(BIN)/python sample_app/demo.py

lint: $(STAMP)
	$(BIN)/ruff check casbackup tests bench sample_app
	$(BIN)/ruff format --check casbackup tests bench sample_app

test: $(STAMP) sysdeps
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-work bench/work .pytest_cache
