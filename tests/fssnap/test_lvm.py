"""LVM against its command contract: fake lvs/lvcreate/lvremove/mount on PATH.

This machine kind has no device-mapper (lvcreate fails with "Required device-mapper
target(s) not detected"), so the fakes record their arguments, answer with lvm2 2.03's JSON
report layout, keep a copy of the volume at lvcreate time (the "snapshot"), and fail on
request. `mount` is a real read-only bind mount of that copy, so the backup really reads
the frozen files through a mount, and `umount` is the real one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

import casbackup.archiver.application as application
from casbackup.archiver.application import backup_application, backup_options
from casbackup.config.model import AppConfig, SnapshotsConfig
from casbackup.errors import DatabaseError, SnapshotProviderError
from casbackup.fssnap import mounts
from casbackup.fssnap.base import snapshot_name
from casbackup.fssnap.lvm import MOUNT_ROOT
from casbackup.fssnap.session import cleanup
from casbackup.reporter import Reporter
from tests.fssnap.conftest import unavailable

LVS = r"""#!/bin/sh
: "${FAKE_STATE:?}" "${FAKE_LOG:?}"
echo "lvs $*" >> "$FAKE_LOG"
if [ -n "$FAKE_LVS_FAIL" ]; then
    echo "  Failed to find logical volume \"$FAKE_LVS_FAIL\"" >&2; exit 5
fi
rows=""
add() { rows="${rows:+$rows,
}                  $1"; }
case "$*" in
*lv_attr*)
    name="${*##*/}"
    if [ -n "$FAKE_FULL" ]; then
        add "{\"lv_name\":\"$name\", \"lv_attr\":\"swi-I-s---\", \"data_percent\":\"100.00\"}"
    else
        add "{\"lv_name\":\"$name\", \"lv_attr\":\"swi-aos---\", \"data_percent\":\"12.50\"}"
    fi ;;
*/dev/*) add '{"lv_name":"data", "vg_name":"vg0"}' ;;
*)
    add '{"lv_name":"data", "vg_name":"vg0"}'
    for d in "$FAKE_STATE"/*; do
        [ -d "$d" ] && add "{\"lv_name\":\"${d##*/}\", \"vg_name\":\"vg0\"}"
    done ;;
esac
printf '  {\n      "report": [\n          {\n              "lv": [\n%s\n              ]\n          }\n      ]\n  }\n' "$rows"
"""
LVCREATE = r"""#!/bin/sh
: "${FAKE_STATE:?}" "${FAKE_LOG:?}" "${FAKE_ORIGIN:?}"
echo "lvcreate $*" >> "$FAKE_LOG"
if [ -n "$FAKE_NO_EXTENTS" ]; then
    echo '  Volume group "vg0" has insufficient free space (10 extents): 512 required.' >&2
    exit 5
fi
cp -a "$FAKE_ORIGIN" "$FAKE_STATE/$3"
echo "  Logical volume \"$3\" created."
"""
LVREMOVE = r"""#!/bin/sh
: "${FAKE_STATE:?}" "${FAKE_LOG:?}"
echo "lvremove $*" >> "$FAKE_LOG"
name="${2#*/}"
[ -n "$name" ] || exit 5
rm -rf "${FAKE_STATE:?}/$name"
echo "  Logical volume \"$name\" successfully removed."
"""
MOUNT = r"""#!/bin/sh
: "${FAKE_STATE:?}" "${FAKE_LOG:?}"
echo "mount $*" >> "$FAKE_LOG"
if [ -n "$FAKE_MOUNT_FAIL" ]; then
    echo "mount: $4: wrong fs type, bad option, bad superblock on $3" >&2; exit 32
fi
/bin/mount --bind "$FAKE_STATE/${3##*/}" "$4" && /bin/mount -o remount,bind,ro "$4"
"""


class Notes(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    def warning(self, message: str) -> None:
        self.lines.append("warning: " + message)


@pytest.fixture
def lvm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    if os.geteuid() != 0 or not os.path.exists("/bin/mount"):
        unavailable("LVM contract tests bind-mount the fake snapshot: they need root")
    bin_dir, state, origin = tmp_path / "bin", tmp_path / "state", tmp_path / "srv" / "app"
    for d in (bin_dir, state, origin):
        d.mkdir(parents=True)
    for name, text in (("lvs", LVS), ("lvcreate", LVCREATE), ("lvremove", LVREMOVE),
                       ("mount", MOUNT)):  # fmt: skip
        tool = bin_dir / name
        tool.write_text(text)
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw - overlay overlay rw\n"
        f"43 22 253:0 / {origin} rw,relatime - ext4 /dev/mapper/vg0-data rw\n"
    )
    monkeypatch.setattr(mounts, "MOUNTINFO", str(info))
    log = tmp_path / "log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for k, v in {"FAKE_LOG": log, "FAKE_STATE": state, "FAKE_ORIGIN": origin}.items():
        monkeypatch.setenv(k, str(v))
    (origin / "data.txt").write_text("as at snapshot time\n")
    return {"origin": origin, "state": state, "log": log}


def _log(lvm: dict[str, Any]) -> list[str]:
    path = lvm["log"]
    return path.read_text().splitlines() if path.exists() else []


def _app(origin: Path) -> AppConfig:
    return AppConfig(name="webapp", sources=(str(origin),), snapshot="lvm")


def _change_live_then(monkeypatch: pytest.MonkeyPatch, after: Any = None) -> None:
    """Inside the backup, once the snapshots exist: change the live file, then `after`."""
    original = application.run_backup

    def run(repo: Any, options: Any, reporter: Any) -> Any:
        for source, _read in options.read_from:
            Path(source, "data.txt").write_text("changed after the snapshot\n")
        if after is not None:
            after()
        return original(repo, options, reporter)

    monkeypatch.setattr(application, "run_backup", run)


def _no_leftovers(lvm: dict[str, Any]) -> None:
    assert os.listdir(lvm["state"]) == []
    ours = os.listdir(MOUNT_ROOT) if os.path.isdir(MOUNT_ROOT) else []
    assert not [n for n in ours if n.endswith(f"-{os.getpid()}")]


def _read_file(repo: Any, snap: Any, path: str) -> bytes:
    tree = snap.root
    parts = [p.encode() for p in path.strip("/").split("/")]
    for part in parts[:-1]:
        tree = next(n for n in repo.load_tree(tree) if n.name == part).subtree
    node = next(n for n in repo.load_tree(tree) if n.name == parts[-1])
    return b"".join(repo.load_blob(c) for c in node.content)


def test_lvm_snapshot_is_read_mounted_and_removed(
    lvm: dict[str, Any], repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _change_live_then(monkeypatch)
    options = backup_options(_app(lvm["origin"]), snapshots=SnapshotsConfig(lvm_snapshot_size="2G"))
    outcome = backup_application(repo, options, Notes())
    snap = outcome.snapshot
    assert snap is not None
    log = _log(lvm)
    lv = next(line.split()[3] for line in log if line.startswith("lvcreate"))
    assert lv.startswith("casbackup-webapp-") and lv.endswith(f"-{os.getpid()}")
    assert log == [
        "lvs --reportformat json -o lv_name,vg_name /dev/mapper/vg0-data",  # which volume
        "lvs --reportformat json -o lv_name,vg_name",  # leftovers of crashed runs
        "lvs --reportformat json -o lv_name,vg_name",  # max_snapshots
        f"lvcreate --snapshot --name {lv} --size 2G vg0/data",
        f"mount -o ro /dev/vg0/{lv} {MOUNT_ROOT}/{lv}",
        f"lvs --reportformat json -o lv_name,lv_attr,data_percent vg0/{lv}",  # before saving
        f"lvremove -f vg0/{lv}",
    ]
    [record] = snap.fs_snapshots
    assert (record.provider, record.origin) == ("lvm", "vg0/data")
    assert record.source == str(lvm["origin"])
    # the tree holds the original path, never the snapshot's mount point
    assert [n.name for n in repo.load_tree(snap.root)] == [lvm["origin"].parts[1].encode()]
    assert _read_file(repo, snap, f"{lvm['origin']}/data.txt") == b"as at snapshot time\n"
    assert (lvm["origin"] / "data.txt").read_text() == "changed after the snapshot\n"
    _no_leftovers(lvm)


def test_lvm_percentage_size_uses_extents(lvm: dict[str, Any], repo: Any) -> None:
    options = backup_options(
        _app(lvm["origin"]), snapshots=SnapshotsConfig(lvm_snapshot_size="20%ORIGIN")
    )
    backup_application(repo, options)
    assert any(line.endswith(" --extents 20%ORIGIN vg0/data") for line in _log(lvm))
    _no_leftovers(lvm)


def test_lvm_snapshot_that_fills_up_fails_the_backup(
    lvm: dict[str, Any], repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FULL", "1")
    options = backup_options(_app(lvm["origin"]), snapshots=SnapshotsConfig())
    with pytest.raises(SnapshotProviderError, match="filled up during the backup"):
        backup_application(repo, options)
    assert repo.list_snapshots(warnings=[]) == []
    assert _log(lvm)[-1].startswith("lvremove -f vg0/casbackup-webapp-")
    _no_leftovers(lvm)


def test_lvm_full_snapshot_is_named_as_the_cause_of_a_failed_read(
    lvm: dict[str, Any], repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot that filled up fails every read: the backup failed with "cannot read
    source ... Input/output error", which did not say why."""
    from casbackup.errors import NotFound

    def unreadable() -> None:
        raise NotFound(f"cannot read source {lvm['origin']}: Input/output error")

    monkeypatch.setenv("FAKE_FULL", "1")
    _change_live_then(monkeypatch, unreadable)
    options = backup_options(_app(lvm["origin"]), snapshots=SnapshotsConfig())
    with pytest.raises(SnapshotProviderError, match="filled up during the backup"):
        backup_application(repo, options)
    assert _log(lvm)[-1].startswith("lvremove -f vg0/casbackup-webapp-")
    _no_leftovers(lvm)
    # a failure while the snapshot is fine keeps its own message
    monkeypatch.delenv("FAKE_FULL")
    with pytest.raises(NotFound, match="Input/output error"):
        backup_application(repo, options)
    _no_leftovers(lvm)


def test_lvm_not_enough_extents(
    lvm: dict[str, Any], repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NO_EXTENTS", "1")
    options = backup_options(_app(lvm["origin"]), snapshots=SnapshotsConfig())
    with pytest.raises(SnapshotProviderError, match="not enough free extents in volume group vg0"):
        backup_application(repo, options)
    assert not any(line.startswith(("mount", "lvremove")) for line in _log(lvm))
    _no_leftovers(lvm)


def test_lvm_failed_mount_removes_the_snapshot(
    lvm: dict[str, Any], repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MOUNT_FAIL", "1")
    options = backup_options(_app(lvm["origin"]), snapshots=SnapshotsConfig())
    with pytest.raises(SnapshotProviderError, match="bad superblock"):
        backup_application(repo, options)
    assert _log(lvm)[-1].startswith("lvremove -f vg0/casbackup-webapp-")
    _no_leftovers(lvm)


@pytest.mark.parametrize("failure", [DatabaseError("dump failed"), KeyboardInterrupt()])
def test_lvm_snapshot_removed_when_the_backup_fails(
    lvm: dict[str, Any], repo: Any, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    def boom() -> None:
        raise failure

    _change_live_then(monkeypatch, boom)
    options = backup_options(_app(lvm["origin"]), snapshots=SnapshotsConfig())
    with pytest.raises(type(failure)):
        backup_application(repo, options)
    assert _log(lvm)[-1].startswith("lvremove -f vg0/casbackup-webapp-")
    _no_leftovers(lvm)


def test_lvm_source_not_on_a_logical_volume(
    lvm: dict[str, Any], repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LVS_FAIL", "/dev/mapper/vg0-data")
    options = backup_options(_app(lvm["origin"]), snapshots=SnapshotsConfig())
    with pytest.raises(SnapshotProviderError, match="is not on an LVM logical volume"):
        backup_application(repo, options)
    assert not any(line.startswith("lvcreate") for line in _log(lvm))


def test_lvm_tool_missing(lvm: dict[str, Any], repo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(lvm["state"]))  # an empty folder: no tools at all
    options = backup_options(_app(lvm["origin"]), snapshots=SnapshotsConfig())
    with pytest.raises(SnapshotProviderError, match="need the 'lvs' command"):
        backup_application(repo, options)


def test_lvm_needs_root(lvm: dict[str, Any], repo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    options = backup_options(_app(lvm["origin"]), snapshots=SnapshotsConfig())
    with pytest.raises(SnapshotProviderError, match="need root"):
        backup_application(repo, options)
    assert not any(line.startswith("lvcreate") for line in _log(lvm))


def test_lvm_leftovers_of_dead_runs_are_removed(lvm: dict[str, Any]) -> None:
    """A snapshot of a dead pid goes, one this process holds stays; and one with this
    process's pid that it did not take is an earlier process's (a container's entrypoint
    killed mid-backup and run again gets the same pid): before, it counted as in use and
    stayed for good, filling its volume group's free space."""
    from casbackup.fssnap.base import hold, let_go

    dead = snapshot_name("webapp", pid=2**22 + 17)  # above Linux's pid_max: never alive
    alive = snapshot_name("webapp")
    earlier = snapshot_name("webapp", now=1)  # this pid, taken in 1970: not by this process
    for name in (dead, alive, earlier, "home-before-upgrade"):
        (lvm["state"] / name).mkdir()
    hold(alive)
    try:
        done = cleanup(("lvm",))
    finally:
        let_go(alive)
    assert sorted(x.handle for x in done.removed) == sorted([f"vg0/{dead}", f"vg0/{earlier}"])
    assert [x.handle for x in done.alive] == [f"vg0/{alive}"]
    assert sorted(os.listdir(lvm["state"])) == sorted([alive, "home-before-upgrade"])
    assert f"lvremove -f vg0/{dead}" in _log(lvm)


def test_database_dumps_run_while_the_snapshot_exists(
    lvm: dict[str, Any], repo: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sqlite3

    from casbackup.engines.base import DatabaseSpec

    db_path = tmp_path / "shop.sqlite3"
    with sqlite3.connect(db_path) as con:
        con.execute("create table t (x)")
        con.execute("insert into t values (1)")
    real_get_engine = application.get_engine

    class Noting:
        def __init__(self, engine: Any) -> None:
            self.engine = engine

        def dump(self, spec: Any) -> Any:
            with open(lvm["log"], "a") as f:  # the fakes log to the same file, in order
                f.write(f"dump {spec.name}\n")
            return self.engine.dump(spec)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.engine, name)

    monkeypatch.setattr(application, "get_engine", lambda name: Noting(real_get_engine(name)))
    app = AppConfig(
        name="webapp", sources=(str(lvm["origin"]),), snapshot="lvm",
        databases=(DatabaseSpec(name="shop", engine="sqlite", path=str(db_path)),),
    )  # fmt: skip
    outcome = backup_application(repo, backup_options(app, snapshots=SnapshotsConfig()))
    assert outcome.snapshot is not None and [d.name for d in outcome.snapshot.databases] == ["shop"]
    steps = [line.split()[0] for line in _log(lvm)]
    assert steps.index("lvcreate") < steps.index("dump") < steps.index("lvremove")


def test_database_file_inside_a_frozen_source_is_left_to_its_dump(
    lvm: dict[str, Any], repo: Any
) -> None:
    """The walk leaves out a database file it dumps, matched by its original path although
    the source is read from the snapshot's mount."""
    import sqlite3

    from casbackup.engines.base import DatabaseSpec

    db_path = lvm["origin"] / "app.sqlite3"
    with sqlite3.connect(db_path) as con:
        con.execute("create table t (x)")
    app = AppConfig(
        name="webapp", sources=(str(lvm["origin"]),), snapshot="lvm",
        excludes=(f"{lvm['origin']}/cache",),
        databases=(DatabaseSpec(name="app", engine="sqlite", path=str(db_path)),),
    )  # fmt: skip
    (lvm["origin"] / "cache").mkdir()
    (lvm["origin"] / "cache" / "junk").write_text("junk")
    snap = backup_application(repo, backup_options(app, snapshots=SnapshotsConfig())).snapshot
    assert snap is not None and snap.excluded_databases == (str(db_path),)
    tree = snap.root
    for part in lvm["origin"].parts[1:]:
        tree = next(n for n in repo.load_tree(tree) if n.name == part.encode()).subtree
    assert sorted(n.name for n in repo.load_tree(tree)) == [b"data.txt"]
    _no_leftovers(lvm)
